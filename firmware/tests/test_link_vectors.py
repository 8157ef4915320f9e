"""The link codec against the golden vectors of docs/link-protocol.md (see linkvectors.py): every
message type and direction encodes to the document's bytes and decodes back to its values, on
CPython and on MicroPython (tests/test_micropython.py copies the document in)."""
from firmware.tests import linkvectors


def _doc_text():
    here = __file__.replace("\\", "/")
    root = here.rsplit("/", 3)[0] if here.count("/") >= 3 else ""
    tried = []
    for path in (root + "/docs/link-protocol.md", "docs/link-protocol.md", "/docs/link-protocol.md"):
        tried.append(path)
        try:
            with open(path) as f:
                return f.read()
        except OSError:
            pass
    raise AssertionError("docs/link-protocol.md not found (tried %r)" % tried)


def test_every_golden_vector_matches_the_codec():
    text = _doc_text()
    problems = linkvectors.problems(text)
    assert not problems, "\n".join(problems)
    assert len(linkvectors.parse_doc(text)) == len(linkvectors.VECTORS) + len(linkvectors.AUTH_VECTORS)


def test_the_vectors_cover_every_message_type_both_ways():
    from firmware.link import frame as fr
    from firmware.link import messages as m
    requests, replies, events = set(), set(), set()
    for _name, type, flags, _seq, _v, _e, _d, _c in linkvectors.VECTORS:
        if flags & fr.FLAG_EVENT:
            events.add(type)
        elif flags & fr.FLAG_REPLY:
            replies.add(type)
        else:
            requests.add(type)
    event_types = (m.EV_UNKNOWN_SPI, m.EV_SA_EXPIRE, m.EV_FLUSHED)
    for t in m.NAMES:
        if t in event_types:
            assert t in events, m.NAMES[t]
        else:
            assert t in requests and t in replies, m.NAMES[t]
    assert m.HELLO in events                            # the boot announcement


def test_a_changed_byte_is_caught():
    text = _doc_text()
    i = text.index("    body ", text.index("SA_DEL request"))
    j = i + len("    body ")
    broken = text[:j] + ("1" if text[j] != "1" else "2") + text[j + 1:]
    problems = linkvectors.problems(broken)
    assert [p for p in problems if p.startswith("SA_DEL request: body")], problems
