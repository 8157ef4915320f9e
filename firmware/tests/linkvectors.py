"""Golden vectors of the link protocol: one frame for every message type and direction, with
fixed values, as the section "Golden vectors" at the end of docs/link-protocol.md lists them.

`VECTORS` builds each frame's message with the codec from the values here; `parse_doc` reads the
document's section; `problems` compares the two both ways (encode the values: the document's
bytes; decode the document's bytes: the values). test_link_vectors.py runs that on CPython and
on MicroPython, tests/test_link_vectors.py checks the framing with an independent COBS library,
and `python -m tools.linkvectors` rewrites the section from here (after a deliberate protocol
change only: the point of golden vectors is that a change to the wire shows up as a diff).
"""
from firmware.link import auth as la
from firmware.link import frame as fr
from firmware.link import messages as m

SECTION = "## Golden vectors"
BOOT_ID = bytes((0x9C, 0xCA, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06))
SESSION = bytes((0x53, 0x45, 0x53, 0x53, 0x49, 0x4F, 0x4E, 0x31))
PEER = (bytes((203, 0, 113, 2)), 4500)
PEER6 = (bytes((0x20, 0x01, 0x0D, 0xB8)) + bytes(11) + bytes((2,)), 4500)
LOCAL = (bytes((192, 0, 2, 1)), 4500)
PACKET = bytes((0x45, 0, 0, 20, 0, 1, 0, 0, 64, 1, 0xB9, 0xA6, 198, 51, 100, 1, 203, 0, 113, 1))
ESP_PACKET = bytes((0, 0, 0x12, 0x34, 0, 0, 0, 1)) + bytes(range(16))
REQ, REPLY, EVENT, NOCACHE = 0, fr.FLAG_REPLY, fr.FLAG_EVENT, fr.FLAG_NOCACHE


def _hello():
    return m.Hello(BOOT_ID, "esp32-devkitc", "0.1.0", m.RESET_WDT, 64, 4096, 16, 2000,
                   m.FEAT_ESN | m.FEAT_UDP_ENCAP | m.FEAT_TUNNEL | m.FEAT_BATCH,
                   [m.Transform(m.ENCR_AES_CBC, 128, 12, "cryptolib", m.SPEED_FAST),
                    m.Transform(20, 128, m.AUTH_NONE, "pure", m.SPEED_SLOW)], 8)


def _spec():
    return m.SaSpec(0x0000C0DE, m.DIR_OUT, m.ENCR_AES_CBC, bytes(range(16)), 12, bytes(range(32, 64)),
                    flags=m.SAF_UDP_ENCAP, replay_window=128, hard_bytes=1 << 32, soft_packets=1000,
                    src=LOCAL, dst=PEER, reqid=7,
                    ts_local=[(bytes((198, 51, 100, 0)), bytes((198, 51, 100, 255)), 0, 0, 65535)],
                    ts_remote=[(bytes((203, 0, 113, 1)), bytes((203, 0, 113, 1)), 17, 500, 500)])


def _stats():
    return m.StatsReply(m.OK, 3, [m.SaStats(0x0000C0DE, m.DIR_OUT, m.SaStats.STATE_SOFT_EXPIRED, 1001,
                                            1001 * 84, 0, 0, 1001, 7)])


def _same(a, b):
    return a == b


def _spec_same(a, b):
    return a.encode() == b.encode() and [getattr(a, f) for f in m.SaSpec.FIELDS] == \
        [getattr(b, f) for f in m.SaSpec.FIELDS]


def _stats_same(a, b):
    return (a.status, a.total, a.records) == (b.status, b.total, b.records)


def _status(body):
    if len(body) != 1:
        raise m.MessageError("a bare status reply is one byte")
    return body[0]


def _empty(body):
    if body:
        raise m.MessageError("no body expected")
    return None


def _hello_reply(body):
    if not body or body[0] != m.OK:
        raise m.MessageError("status")
    return m.Hello.decode(body[1:])


def _ack(body):
    if not body or body[0] != m.OK:
        raise m.MessageError("status")
    return m.HeartbeatAck.decode(body[1:])


# name, type, flags, seq, value, encode(value) -> body, decode(body) -> value, compare
VECTORS = [
    ("HELLO request", m.HELLO, REQ, 1, SESSION, m.encode_hello_request, m.decode_hello_request, _same),
    ("HELLO reply", m.HELLO, REPLY, 1, _hello(), lambda h: bytes((m.OK,)) + h.encode(), _hello_reply, _same),
    ("HELLO event (boot)", m.HELLO, EVENT, 1, _hello(), lambda h: h.encode(), m.Hello.decode, _same),
    ("HEARTBEAT request", m.HEARTBEAT, NOCACHE, 2, None, lambda v: b"", _empty, _same),
    ("HEARTBEAT reply", m.HEARTBEAT, REPLY | NOCACHE, 2,
     m.HeartbeatAck(BOOT_ID, 123456789, 2, 0x01020304, 1, 5), lambda a: bytes((m.OK,)) + a.encode(), _ack, _same),
    ("SA_ADD request", m.SA_ADD, REQ, 3, _spec(), lambda s: s.encode(), m.SaSpec.decode, _spec_same),
    ("SA_ADD reply", m.SA_ADD, REPLY, 3, m.SadReply(m.OK, 0x0A, 2, 0), lambda r: r.encode(), m.SadReply.decode,
     _same),
    ("SA_ADD reply (exists)", m.SA_ADD, REPLY, 4, m.SadReply(m.EXISTS, 0x0A, 2, 0), lambda r: r.encode(),
     m.SadReply.decode, _same),
    ("SA_DEL request", m.SA_DEL, REQ, 5, (0x0000C0DE, m.DIR_OUT), lambda r: m.encode_sa_ref(*r),
     m.decode_sa_ref, _same),
    ("SA_DEL reply", m.SA_DEL, REPLY, 5, m.SadReply(m.OK, 0x0B, 1, 0), lambda r: r.encode(), m.SadReply.decode,
     _same),
    ("SA_FLUSH request", m.SA_FLUSH, REQ, 6, None, lambda v: b"", _empty, _same),
    ("SA_FLUSH reply", m.SA_FLUSH, REPLY, 6, m.SadReply(m.OK, 0x0C, 0, 1), lambda r: r.encode(),
     m.SadReply.decode, _same),
    ("SA_STATS request", m.SA_STATS, NOCACHE, 7, (2, 1), lambda r: m.encode_stats_request(*r),
     m.decode_stats_request, _same),
    ("SA_STATS reply", m.SA_STATS, REPLY | NOCACHE, 7, _stats(), lambda s: s.encode(), m.StatsReply.decode,
     _stats_same),
    ("ENCRYPT request", m.ENCRYPT, NOCACHE, 8, [(0x0000C0DE, PACKET)], m.encode_encrypt_request,
     lambda b: m.decode_encrypt_request(b, 16), _same),
    ("ENCRYPT reply", m.ENCRYPT, REPLY | NOCACHE, 8, (m.OK, [(m.P_OK, ESP_PACKET), (m.P_EXPIRED, b"")]),
     lambda r: m.encode_encrypt_reply(r[1]), m.decode_encrypt_reply, _same),
    ("DECRYPT request", m.DECRYPT, NOCACHE, 9, [(PEER, ESP_PACKET), (PEER6, b"\xff")],
     m.encode_decrypt_request, lambda b: m.decode_decrypt_request(b, 16), _same),
    ("DECRYPT reply", m.DECRYPT, REPLY | NOCACHE, 9,
     (m.OK, [(m.P_OK, 0x00001234, PACKET), (m.P_KEEPALIVE, 0, b"")]),
     lambda r: m.encode_decrypt_reply(r[1]), m.decode_decrypt_reply, _same),
    ("RESET request", m.RESET, REQ, 10, None, lambda v: b"", _empty, _same),
    ("RESET reply", m.RESET, REPLY, 10, m.OK, lambda s: bytes((s,)), _status, _same),
    ("COUNTERS request", m.COUNTERS, NOCACHE, 11, None, lambda v: b"", _empty, _same),
    ("COUNTERS reply", m.COUNTERS, REPLY | NOCACHE, 11, (m.OK, {"link_bad_crc": 1, "sa_count": 2}),
     lambda r: m.encode_counters_reply([("link_bad_crc", 1), ("sa_count", 2)]), m.decode_counters_reply, _same),
    ("UNSUPPORTED reply (unknown type 0x7f)", 0x7F, REPLY, 12, m.UNSUPPORTED, lambda s: bytes((s,)), _status,
     _same),
    ("UNKNOWN_SPI event", m.EV_UNKNOWN_SPI, EVENT, 2, m.UnknownSpi([(0xDEADBEEF, PEER, 3)], 4),
     lambda e: e.encode(), m.UnknownSpi.decode, _same),
    ("SA_EXPIRE event", m.EV_SA_EXPIRE, EVENT, 3, m.SaExpire(0x0000C0DE, m.DIR_OUT, True, m.EXP_SEQ, 7),
     lambda e: e.encode(), m.SaExpire.decode, _same),
    ("FLUSHED event", m.EV_FLUSHED, EVENT, 4, m.Flushed(m.FLUSH_HOST_SILENCE, 2, 0x0D), lambda e: e.encode(),
     m.Flushed.decode, _same),
]


# ---- authenticated frames (firmware/link/auth.py) ----------------------------------------------
LINK_KEY = bytes(range(0x40, 0x60))
NONCE_H = bytes(range(0xA0, 0xB0))      # the host's, in its HELLO request
NONCE_B = bytes(range(0xB0, 0xC0))      # the board's, in its HELLO reply


def keys():
    """The keys the vectors are sealed with: {name: bytes}, in the order the document lists them."""
    h2b, b2h = la.boot_keys(LINK_KEY)
    sh2b, sb2h, enc = la.session_keys(LINK_KEY, NONCE_H, NONCE_B)
    return {"link key": LINK_KEY, "Nh": NONCE_H, "Nb": NONCE_B, "boot h2b": h2b, "boot b2h": b2h,
            "session h2b": sh2b, "session b2h": sb2h, "session enc": enc}


KEY_ORDER = ("link key", "Nh", "Nb", "boot h2b", "boot b2h", "session h2b", "session b2h", "session enc")


def _hello_auth():
    h = _hello()
    h.features |= m.FEAT_LINK_AUTH
    return h


def _strip(n, dec):
    def f(body):
        if len(body) < n:
            raise m.MessageError("short")
        return dec(body[n:])
    return f


def _echo():
    """The tag of the authenticated HEARTBEAT request: what a board without a session echoes."""
    for name, type, flags, seq, value, enc, _d, _c, key, aseq in AUTH_VECTORS:
        if name == "HEARTBEAT request (authenticated)":
            return _sealer(key, aseq).seal(type, seq, flags, enc(value))[1]
    raise KeyError("HEARTBEAT request (authenticated)")


def _sealer(key, aseq):
    s = la.Sealer(keys()[key], counting=aseq != 0)
    s.next = aseq
    return s


# name, type, flags (FLAG_AUTH is added), seq, value, encode(value) -> body (before FLAG_ENC),
# decode(body) -> value, compare, the key it is sealed with, its auth sequence number
AUTH_VECTORS = [
    ("HELLO request (authenticated)", m.HELLO, REQ, 1, SESSION, lambda s: m.encode_hello_request(s) + NONCE_H,
     _strip(0, lambda b: m.decode_hello_request(b[:-la.NONCE_LEN])), _same, "boot h2b", 0),
    ("HELLO reply (authenticated)", m.HELLO, REPLY, 1, _hello_auth(),
     lambda h: NONCE_B + bytes((m.OK,)) + h.encode(), _strip(la.NONCE_LEN, _hello_reply), _same, "session b2h", 1),
    ("HELLO event (boot, authenticated)", m.HELLO, EVENT, 1, _hello_auth(), lambda h: la.ZERO_ECHO + h.encode(),
     _strip(la.TAG_LEN, m.Hello.decode), _same, "boot b2h", 0),
    ("HEARTBEAT request (authenticated)", m.HEARTBEAT, NOCACHE, 2, None, lambda v: b"", _empty, _same,
     "session h2b", 1),
    ("HEARTBEAT reply (authenticated)", m.HEARTBEAT, REPLY | NOCACHE, 2,
     m.HeartbeatAck(BOOT_ID, 123456789, 2, 0x01020304, 1, 5), lambda a: bytes((m.OK,)) + a.encode(), _ack, _same,
     "session b2h", 2),
    ("SA_ADD request (authenticated, encrypted)", m.SA_ADD, fr.FLAG_ENC, 3, _spec(), lambda s: s.encode(),
     m.SaSpec.decode, _spec_same, "session h2b", 2),
    ("HELLO event (no session, authenticated)", m.HELLO, EVENT, 2, _hello_auth(),
     lambda h: _echo() + h.encode(), _strip(la.TAG_LEN, m.Hello.decode), _same, "boot b2h", 0),
]


def _seal(type, seq, flags, body, key, aseq):
    enc = la.Mac(keys()["session enc"]) if flags & fr.FLAG_ENC else None
    return _sealer(key, aseq).seal(type, seq, flags, body, enc)[0]


def built():
    """{name: (type, flags, seq, body, wire)} from the values above (flags as on the wire)."""
    out = {}
    for name, type, flags, seq, value, enc, _dec, _cmp in VECTORS:
        body = enc(value)
        out[name] = (type, flags, seq, body, fr.encode(type, seq, flags, body))
    for name, type, flags, seq, value, enc, _dec, _cmp, key, aseq in AUTH_VECTORS:
        body = enc(value)
        out[name] = (type, flags | fr.FLAG_AUTH, seq, body, _seal(type, seq, flags, body, key, aseq))
    return out


def all_vectors():
    """(name, value, decode, compare, key or None) of every vector."""
    return ([(v[0], v[4], v[6], v[7], None) for v in VECTORS]
            + [(v[0], v[4], v[6], v[7], v[8]) for v in AUTH_VECTORS])


def parse_doc(text):
    """The vectors in the document's section: {name: (type, flags, seq, body, wire)}.

    Inside the section's text block a vector starts with a line `NAME  type 0x.. flags 0x.. seq N`,
    followed by indented `body` and `wire` lines of hex; longer hex continues on deeper-indented
    lines. Anything else (the `fields` lines) is for people."""
    start = text.find("\n" + SECTION)
    if start < 0:
        raise ValueError("no section %r" % SECTION)
    out = {}
    name = None
    key = None
    fields = {}
    in_block = False
    for line in text[start:].split("\n"):
        if line.startswith("```"):
            in_block = not in_block
            continue
        if not in_block or not line.strip():
            continue
        if not line.startswith(" "):
            if name is not None:
                out[name] = _entry(name, fields)
            head, tail = line.rsplit(" type ", 1)
            name = head.strip()
            words = tail.split()
            fields = {"type": int(words[0], 16), "flags": int(words[2], 16), "seq": int(words[4]),
                      "body": "", "wire": ""}
            key = None
            continue
        stripped = line.strip()
        if line.startswith("        "):
            if key is not None:
                fields[key] += stripped
            continue
        word = stripped.split(" ")[0]
        key = word if word in ("body", "wire") else None
        if key is not None:
            fields[key] += stripped[len(word):].strip()
    if name is not None:
        out[name] = _entry(name, fields)
    return out


def _entry(name, f):
    def unhex(s):
        s = s.replace(" ", "")
        if s == "(empty)":
            return b""
        return bytes(int(s[i:i + 2], 16) for i in range(0, len(s), 2))
    return (f["type"], f["flags"], f["seq"], unhex(f["body"]), unhex(f["wire"]))


def problems(text):
    """Differences between the document and the codec, as readable lines (none: all agree)."""
    doc = parse_doc(text)
    ours = built()
    out = []
    for name in ours:
        if name not in doc:
            out.append("%s: missing from the document" % name)
    for name in doc:
        if name not in ours:
            out.append("%s: in the document, not in firmware/tests/linkvectors.py" % name)
    for name, value, dec, same, key in all_vectors():
        if name not in doc:
            continue
        d_type, d_flags, d_seq, d_body, d_wire = doc[name]
        o_type, o_flags, o_seq, o_body, o_wire = ours[name]
        if (d_type, d_flags, d_seq) != (o_type, o_flags, o_seq):
            out.append("%s: header %r, the codec %r" % (name, (d_type, d_flags, d_seq), (o_type, o_flags, o_seq)))
        if d_body != o_body:
            out.append("%s: body %s, the codec encodes %s" % (name, _hex(d_body), _hex(o_body)))
        if d_wire != o_wire:
            out.append("%s: wire %s, the codec frames %s" % (name, _hex(d_wire), _hex(o_wire)))
        try:
            got = dec(d_body)
        except m.MessageError as e:
            out.append("%s: the document's body does not decode: %s" % (name, e))
            continue
        if not same(got, value):
            out.append("%s: the document's body decodes to %r, not %r" % (name, got, value))
        frames = fr.FrameDecoder(65535, auth=key is not None).feed(d_wire)
        if key is not None and len(frames) == 1:
            enc = la.Mac(keys()["session enc"])
            if la.Opener(keys()[key], window=0).open(frames[0], enc) != la.OK:
                out.append("%s: the document's wire bytes do not verify under the %s key" % (name, key))
        if len(frames) != 1 or (frames[0].type, frames[0].flags, frames[0].seq, bytes(frames[0].body)) != \
                (d_type, d_flags, d_seq, d_body):
            out.append("%s: the document's wire bytes do not deframe to its header and body: %r" % (name, frames))
    return out


def _hex(b):
    return "".join("%02x" % x for x in b) or "(empty)"


def _ip(b):
    if len(b) == 4:
        return "%d.%d.%d.%d" % tuple(b)
    return ":".join("%x" % ((b[i] << 8) | b[i + 1]) for i in range(0, 16, 2))


def _fmt(v, key=""):
    """Readable and exact: bytes in hex, addresses as ip:port, SPIs and generations in hex."""
    if v is None:
        return "none"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return "0x%x" % v if key in ("spi", "sad_gen") else "%d" % v
    if isinstance(v, (bytes, bytearray)):
        return _hex(v)
    if isinstance(v, str):
        return '"%s"' % v
    if isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], bytes) and len(v[0]) in (4, 16) and \
            isinstance(v[1], int):
        return "%s port %d" % (_ip(v[0]), v[1])
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join("%s %s" % (k, _fmt(v[k])) for k in sorted(v)) + "}"
    if isinstance(v, m.SaSpec):
        return "SaSpec(" + ", ".join("%s %s" % (f, _fmt(getattr(v, f), f)) for f in m.SaSpec.FIELDS) + ")"
    if isinstance(v, m.StatsReply):
        return "StatsReply(status %d, total %d, records %s)" % (v.status, v.total, _fmt(v.records))
    d = v.__dict__
    return "%s(%s)" % (type(v).__name__, ", ".join("%s %s" % (k, _fmt(d[k], k)) for k in sorted(d)))


def describe(value):
    """The `fields` line of a vector."""
    return "(no body)" if value is None else _fmt(value)


def section():
    """The document's section text, from the values above."""
    lines = [SECTION, "",
             "One frame for every message type and direction, with the values on each `fields` line. A",
             "codec that encodes those values must produce `body` exactly, and frame it as `wire` (the",
             "bytes on the line, both 0x00 delimiters included); one that decodes `wire` must get the",
             "values back. Integers are big-endian, the CRC-32 little-endian. Checked on CPython and on",
             "MicroPython (firmware/tests/test_link_vectors.py) and against an independent COBS",
             "implementation (tests/test_link_vectors.py); generated from firmware/tests/linkvectors.py",
             "by `python -m tools.linkvectors`, only for a deliberate change of the wire format.",
             "", "```text"]
    for name, type, flags, seq, value, enc, _dec, _cmp in VECTORS:
        body = enc(value)
        wire = fr.encode(type, seq, flags, body)
        lines.append("%s type 0x%02x flags 0x%02x seq %d" % (name, type, flags, seq))
        lines.append("    fields %s" % describe(value))
        for key, data in (("body", body), ("wire", wire)):
            h = _hex(data)
            lines.append("    %s %s" % (key, h[:64]))
            for i in range(64, len(h), 64):
                lines.append("         " + h[i:i + 64])
    lines += ["```", "",
              "### Authenticated frames", "",
              "The same codec on an authenticated link (FLAG_AUTH: the auth sequence number and the tag",
              "before the CRC; SA_ADD's body encrypted, FLAG_ENC), sealed with these keys: the link key, the",
              "nonces of a HELLO exchange, and what HKDF-SHA-256 derives from them (above). `body` is the",
              "body before encryption; `sealed` names the key and the auth sequence number. The second",
              "HELLO event is a board without a session answering the HEARTBEAT request above: it echoes",
              "that frame's tag. Checked like the others, and by tests/test_link_vectors.py against",
              "`cryptography`'s HKDF and the standard library's HMAC.", ""]
    k = keys()
    for name in KEY_ORDER:
        lines.append("- %s: `%s`" % (name, _hex(k[name])))
    lines += ["", "```text"]
    for name, type, flags, seq, value, enc, _dec, _cmp, key, aseq in AUTH_VECTORS:
        body = enc(value)
        wire = _seal(type, seq, flags, body, key, aseq)
        lines.append("%s type 0x%02x flags 0x%02x seq %d" % (name, type, flags | fr.FLAG_AUTH, seq))
        lines.append("    fields %s" % describe(value))
        lines.append("    sealed %s, auth seq %d" % (key, aseq))
        for key_, data in (("body", body), ("wire", wire)):
            h = _hex(data)
            lines.append("    %s %s" % (key_, h[:64]))
            for i in range(64, len(h), 64):
                lines.append("         " + h[i:i + 64])
    lines.append("```")
    return "\n".join(lines) + "\n"
