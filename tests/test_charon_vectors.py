"""The IKE codec against messages strongSwan charon wrote (tests/vectors/charon_ike.json, captured
by tools/charon_vectors.py between two charons: IKE_SA_INIT, IKE_AUTH with certificates,
CREATE_CHILD_SA for a Child SA rekey with PFS, a new narrowed Child SA and an IKE SA rekey,
INFORMATIONAL Deletes).

Protected messages are opened here with the `cryptography` library and the SK_e keys charon
logged, not with our SK code; then host/ike/payloads.py decodes every payload chain and
re-encodes it from the decoded fields, which must give charon's bytes back exactly. Our own SK
code must open each message to the same payloads."""
import json
import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from host.ike.constants import ExchangeType, Flag, PayloadType
from host.ike.crypto import make_sk_cipher
from host.ike.message import Message, open_sk, parse_header, parse_plain
from host.ike.payloads import SaPayload, decode_chain, encode_chain

VECTORS = json.loads((Path(__file__).parent / "vectors" / "charon_ike.json").read_text())
MESSAGES = VECTORS["messages"]
HDR = 28
ENCR_AES_GCM_16 = 20


def open_independently(wire: bytes, sk_e: bytes) -> tuple[int, bytes]:
    """RFC 7296 §3.14 + RFC 5282: (first inner payload type, inner chain without padding)."""
    first, _flags, length = struct.unpack_from("!BBH", wire, HDR)
    assert HDR + length == len(wire)
    iv = wire[HDR + 4:HDR + 12]
    plain = AESGCM(sk_e[:-4]).decrypt(sk_e[-4:] + iv, wire[HDR + 12:], wire[:HDR + 4])
    pad = plain[-1]
    return first, plain[:len(plain) - 1 - pad]


def fresh(payloads):
    """Copies that encode from their fields (a decoded SA payload keeps the bytes it came from)."""
    return [SaPayload(p.proposals) if isinstance(p, SaPayload) else p for p in payloads]


@pytest.mark.parametrize("n", range(len(MESSAGES)))
def test_charon_message_decodes_and_reencodes_byte_for_byte(n):
    m = MESSAGES[n]
    wire = bytes.fromhex(m["wire"])
    hdr = parse_header(wire)
    rebuilt = Message(hdr.spi_i, hdr.spi_r, hdr.exchange, hdr.flags, hdr.mid, []).encode()
    assert rebuilt[:16] + rebuilt[17:24] == wire[:16] + wire[17:24]     # all but next payload and length
    if "sk_e" not in m:
        assert hdr.exchange == ExchangeType.IKE_SA_INIT
        payloads, sk = parse_plain(hdr, wire)
        assert sk is None
        assert Message(hdr.spi_i, hdr.spi_r, hdr.exchange, hdr.flags, hdr.mid, fresh(payloads)).encode() == wire
        return
    sk_e = bytes.fromhex(m["sk_e"])
    first, inner = open_independently(wire, sk_e)
    payloads, nested = decode_chain(first, inner, 0, len(inner))
    assert nested is None
    assert encode_chain(fresh(payloads)) == (first if payloads else 0, inner)
    # our SK code (the keys in our own direction's role) opens it to the same payloads
    outer, sk = parse_plain(hdr, wire)
    assert outer == []
    cipher = make_sk_cipher(ENCR_AES_GCM_16, 0, sk_e, sk_e, b"", b"")
    assert open_sk(wire, sk, cipher) == payloads


def test_the_vectors_cover_every_exchange_and_payload_we_parse():
    exchanges, types, flags = set(), set(), set()
    for m in MESSAGES:
        wire = bytes.fromhex(m["wire"])
        hdr = parse_header(wire)
        exchanges.add(hdr.exchange)
        flags.add(hdr.flags & (Flag.INITIATOR | Flag.RESPONSE))
        if "sk_e" in m:
            first, inner = open_independently(wire, bytes.fromhex(m["sk_e"]))
            payloads = decode_chain(first, inner, 0, len(inner))[0]
        else:
            payloads = parse_plain(hdr, wire)[0]
        types |= {p.ptype for p in payloads}
    assert exchanges == {ExchangeType.IKE_SA_INIT, ExchangeType.IKE_AUTH, ExchangeType.CREATE_CHILD_SA,
                         ExchangeType.INFORMATIONAL}
    assert flags == {Flag.INITIATOR, Flag.INITIATOR | Flag.RESPONSE, 0, Flag.RESPONSE}   # both roles
    assert types >= {PayloadType.SA, PayloadType.KE, PayloadType.NONCE, PayloadType.NOTIFY, PayloadType.IDi,
                     PayloadType.IDr, PayloadType.CERT, PayloadType.CERTREQ, PayloadType.AUTH, PayloadType.TSi,
                     PayloadType.TSr, PayloadType.DELETE}
