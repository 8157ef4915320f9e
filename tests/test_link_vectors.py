"""The golden vectors of docs/link-protocol.md read without our codec: framing with PyPI `cobs`
(an independent COBS implementation) and zlib's CRC-32, bodies with struct per the document's
message table. firmware/tests/test_link_vectors.py checks them against the codec (CPython and
MicroPython); here the document itself must be what tools/linkvectors.py generates."""
import hashlib
import hmac
import re
import struct
import zlib
from pathlib import Path

import pytest
from cobs import cobs
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from firmware.tests import linkvectors
from tools import linkvectors as generator

DOC = Path(__file__).resolve().parent.parent / "docs" / "link-protocol.md"
VECTORS = linkvectors.parse_doc(DOC.read_text())


def test_the_document_is_in_sync_with_its_generator():
    assert generator.main(["--check"]) == 0


TEXT = DOC.read_text()
KEYS = {m.group(1): bytes.fromhex(m.group(2)) for m in re.finditer(r"^- ([a-zA-Z0-9 ]+): `([0-9a-f]+)`$", TEXT, re.M)}
SEALED = dict(re.findall(r"^(\S.*?) type 0x[0-9a-f]{2} flags 0x[0-9a-f]{2} seq \d+\n    fields .*\n"
                         r"    sealed ([a-z0-9 ]+), auth seq \d+$", TEXT, re.M))


def hkdf(salt, ikm, info, n):
    return HKDF(hashes.SHA256(), n, salt, info).derive(ikm)


def test_the_documented_keys_are_hkdf_sha256_of_the_link_key_and_nonces():
    k = KEYS
    assert len(k) == 8 and len(SEALED) == 7, (sorted(k), SEALED)
    boot = hkdf(b"ikeoffload link boot", k["link key"], b"boot keys", 64)
    assert (k["boot h2b"], k["boot b2h"]) == (boot[:32], boot[32:])
    sess = hkdf(k["Nh"] + k["Nb"], k["link key"], b"ikeoffload link session", 96)
    assert (k["session h2b"], k["session b2h"], k["session enc"]) == (sess[:32], sess[32:64], sess[64:])


@pytest.mark.parametrize("name", sorted(VECTORS))
def test_frame_decodes_with_an_independent_cobs_and_crc(name):
    type_, flags, seq, body, wire = VECTORS[name]
    assert wire[0] == 0 and wire[-1] == 0 and 0 not in wire[1:-1]        # 0x00 COBS(frame) 0x00
    raw = cobs.decode(wire[1:-1])
    assert cobs.encode(raw) == wire[1:-1]
    assert struct.unpack("<I", raw[-4:])[0] == zlib.crc32(raw[:-4])
    assert struct.unpack(">BBBH", raw[:5]) == (1, type_, flags, seq)
    if not flags & 0x80:
        assert raw[5:-4] == body
        return
    # FLAG_AUTH: auth seq (8) and tag (16) before the CRC; the tag is HMAC-SHA-256-128 of all before it
    aseq = struct.unpack(">Q", raw[-28:-20])[0]
    tag = hmac.new(KEYS[SEALED[name]], raw[:-20], hashlib.sha256).digest()[:16]
    assert raw[-20:-4] == tag
    sent = raw[5:-28]
    if flags & 0x40:         # FLAG_ENC: XOR with HMAC(enc, aseq | block counter) blocks
        stream = b"".join(hmac.new(KEYS["session enc"], struct.pack(">QI", aseq, i), hashlib.sha256).digest()
                          for i in range(len(sent) // 32 + 1))
        sent = bytes(a ^ b for a, b in zip(sent, stream))
        assert raw[5:-28] != body
    assert sent == body


FIXED = {       # name: (struct layout from the document's table, the values the vector carries)
    "HEARTBEAT reply": (">B8sQHIHI", (0, bytes.fromhex("9cca010203040506"), 123456789, 2, 0x01020304, 1, 5)),
    "SA_ADD reply": (">BIHH", (0, 0x0A, 2, 0)),
    "SA_ADD reply (exists)": (">BIHH", (4, 0x0A, 2, 0)),
    "SA_DEL request": (">IB", (0xC0DE, 1)),
    "SA_FLUSH reply": (">BIHH", (0, 0x0C, 0, 1)),
    "SA_STATS request": (">HH", (2, 1)),
    "SA_EXPIRE event": (">IBBBI", (0xC0DE, 1, 1, 3, 7)),
    "FLUSHED event": (">BHI", (1, 2, 0x0D)),
    "HELLO request": (">8s", (b"SESSION1",)),
    "RESET reply": (">B", (0,)),
    "UNSUPPORTED reply (unknown type 0x7f)": (">B", (2,)),
}


@pytest.mark.parametrize("name", sorted(FIXED))
def test_fixed_layout_bodies_read_with_struct(name):
    fmt, want = FIXED[name]
    body = VECTORS[name][3]
    assert struct.calcsize(fmt) == len(body)
    assert struct.unpack(fmt, body) == want


def test_batched_bodies_read_by_hand():
    """ENCRYPT / DECRYPT: n (2), then per item the fields the document's table lists."""
    body = VECTORS["ENCRYPT request"][3]
    n, spi, length = struct.unpack_from(">HIH", body)
    assert (n, spi, length) == (1, 0xC0DE, 20) and body[8:] == linkvectors.PACKET
    body = VECTORS["DECRYPT reply"][3]
    status, n = struct.unpack_from(">BH", body)
    st, spi, length = struct.unpack_from(">BIH", body, 3)
    assert (status, n, st, spi, length) == (0, 2, 0, 0x1234, 20)
    assert body[10:30] == linkvectors.PACKET and struct.unpack_from(">BIH", body, 30) == (7, 0, 0)
    body = VECTORS["DECRYPT request"][3]
    assert body[:3] == b"\x00\x02\x04" and body[3:7] == bytes((203, 0, 113, 2))        # IPv4 address
    assert struct.unpack_from(">HH", body, 7) == (4500, len(linkvectors.ESP_PACKET))
