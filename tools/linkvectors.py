"""Write the "Golden vectors" section at the end of docs/link-protocol.md from
firmware/tests/linkvectors.py (replacing the section if it is there; the rest of the file is left
as it is). Only for a deliberate change of the wire format: the tests compare the two.

    python -m tools.linkvectors [--check]
"""
import argparse
import sys
from pathlib import Path

from firmware.tests import linkvectors

DOC = Path(__file__).resolve().parent.parent / "docs" / "link-protocol.md"


def render(text: str) -> str:
    start = text.find("\n" + linkvectors.SECTION)
    if start < 0:
        return text.rstrip("\n") + "\n\n" + linkvectors.section()
    end = text.find("\n## ", start + 1)         # the section ends at the next one, if any follows
    tail = text[end:] if end >= 0 else ""
    return text[:start + 1] + linkvectors.section() + tail


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m tools.linkvectors", description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if the document differs, write nothing")
    args = ap.parse_args(argv)
    text = DOC.read_text()
    new = render(text)
    if args.check:
        if new != text:
            print("docs/link-protocol.md: the golden vectors differ from firmware/tests/linkvectors.py",
                  file=sys.stderr)
            return 1
        return 0
    if new != text:
        DOC.write_text(new)
        print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
