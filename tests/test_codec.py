"""Payload and message codec (RFC 7296 §3): round trips (Hypothesis) and strict length checks."""
import struct

import pytest
from hypothesis import given, settings, strategies as st

from host.ike.constants import ExchangeType, Flag, PayloadType, TsType
from host.ike.crypto import AesCbcHmacSk, AesGcmSk
from host.ike.constants import Integ
from host.ike.message import Message, open_sk, parse_header, parse_plain
from host.ike.payloads import (
    AuthPayload, CertPayload, DeletePayload, IdPayload, KePayload, NoncePayload, NotifyPayload, Proposal,
    RawPayload, SaPayload, SyntaxError_, TrafficSelector, Transform, TsPayload, UnsupportedCritical,
    VendorPayload, decode_chain, encode_chain,
)

u8, u16 = st.integers(0, 255), st.integers(0, 65535)
blob = st.binary(min_size=0, max_size=64)

transform = st.builds(lambda t, i, kl: Transform(t, i, kl), st.integers(1, 5), u16,
                      st.one_of(st.none(), u16))
proposal = st.builds(lambda n, p, spi, ts: Proposal(n, p, spi, ts), st.integers(1, 255), st.integers(1, 3),
                     st.sampled_from([b"", b"\x01\x02\x03\x04", b"12345678"]),
                     st.lists(transform, min_size=0, max_size=8))
# a selector's address range starts where it ends or before (§3.13.1); its ports may be "opaque"
ts4 = st.builds(lambda p, a, b, c, d: TrafficSelector(TsType.IPV4_ADDR_RANGE, p, a, b, min(c, d), max(c, d)),
                u8, u16, u16, st.binary(min_size=4, max_size=4), st.binary(min_size=4, max_size=4))
ts6 = st.builds(lambda p, a, b, c, d: TrafficSelector(TsType.IPV6_ADDR_RANGE, p, a, b, min(c, d), max(c, d)),
                u8, u16, u16, st.binary(min_size=16, max_size=16), st.binary(min_size=16, max_size=16))
payload = st.one_of(
    st.builds(SaPayload, st.lists(proposal, min_size=1, max_size=5)),
    st.builds(KePayload, u16, blob),
    st.builds(lambda t, d, pt: IdPayload(t, d, pt), u8, st.binary(min_size=1, max_size=40),
              st.sampled_from([PayloadType.IDi, PayloadType.IDr])),
    st.builds(lambda e, d, pt: CertPayload(e, d, pt), u8, blob,
              st.sampled_from([PayloadType.CERT, PayloadType.CERTREQ])),
    st.builds(AuthPayload, u8, st.binary(min_size=1, max_size=64)),
    st.builds(NoncePayload, st.binary(min_size=16, max_size=256)),
    st.builds(lambda t, d, p, s: NotifyPayload(t, d, p, s), u16, blob, st.integers(0, 3),
              st.sampled_from([b"", b"abcd", b"12345678"])),
    st.builds(lambda n: DeletePayload(3, [struct.pack("!I", i) for i in range(n)]), st.integers(0, 10)),
    st.builds(lambda: DeletePayload(1)),
    st.builds(VendorPayload, blob),
    st.builds(lambda s, pt: TsPayload(s, pt), st.lists(st.one_of(ts4, ts6), min_size=1, max_size=6),
              st.sampled_from([PayloadType.TSi, PayloadType.TSr])),
    st.builds(lambda d: RawPayload(PayloadType.CP, d), blob),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(payload, min_size=0, max_size=8))
def test_chain_round_trip(payloads):
    first, data = encode_chain(payloads)
    out, sk = decode_chain(first, data, 0, len(data))
    assert sk is None
    assert out == payloads
    # and re-encoding is byte-identical
    assert encode_chain(out) == (first, data)


@settings(max_examples=100, deadline=None)
@given(st.lists(payload, min_size=1, max_size=6), st.integers(0, 2**32 - 1),
       st.sampled_from(list(ExchangeType)), st.sampled_from(["gcm", "cbc"]))
def test_message_round_trip_protected(payloads, mid, exch, kind):
    if kind == "gcm":
        a, b = AesGcmSk(bytes(36), bytes(range(36))), AesGcmSk(bytes(range(36)), bytes(36))
    else:
        a = AesCbcHmacSk(bytes(16), bytes(range(16)), Integ.HMAC_SHA2_256_128, bytes(32), bytes(range(32)))
        b = AesCbcHmacSk(bytes(range(16)), bytes(16), Integ.HMAC_SHA2_256_128, bytes(range(32)), bytes(32))
    m = Message(b"I" * 8, b"R" * 8, exch, Flag.INITIATOR, mid, payloads)
    wire = m.encode(a)
    hdr = parse_header(wire)
    assert (hdr.spi_i, hdr.spi_r, hdr.exchange, hdr.mid) == (b"I" * 8, b"R" * 8, exch, mid)
    outer, sk = parse_plain(hdr, wire)
    assert outer == [] and sk is not None
    assert open_sk(wire, sk, b) == payloads


@settings(max_examples=100, deadline=None)
@given(st.lists(payload, min_size=0, max_size=6), st.integers(0, 2**32 - 1))
def test_message_round_trip_plain(payloads, mid):
    m = Message(b"I" * 8, bytes(8), ExchangeType.IKE_SA_INIT, Flag.INITIATOR, mid, payloads)
    wire = m.encode()
    hdr = parse_header(wire)
    out, sk = parse_plain(hdr, wire)
    assert sk is None and out == payloads


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=300), st.integers(0, 60))
def test_decoder_only_raises_protocol_errors(data, first):
    try:
        decode_chain(first, data, 0, len(data))
    except (SyntaxError_, UnsupportedCritical):
        pass


# ---------------------------------------------------------------- strictness, by example

def _hdr(length, nxt=0, ver=0x20):
    return struct.pack("!8s8sBBBBII", b"I" * 8, bytes(8), nxt, ver, 34, 8, 0, length)


def test_header_length_must_match_datagram():
    parse_header(_hdr(28))
    with pytest.raises(SyntaxError_):
        parse_header(_hdr(29))
    with pytest.raises(SyntaxError_):
        parse_header(_hdr(28) + b"x")
    with pytest.raises(SyntaxError_):
        parse_header(_hdr(28)[:27])


def test_major_version_is_checked():
    from host.ike.message import VersionError
    with pytest.raises(VersionError):
        parse_header(_hdr(28, ver=0x30))
    parse_header(_hdr(28, ver=0x21))         # minor versions are ignored (§2.5)


def _chain(ptype, body, critical=False, nxt=0):
    return struct.pack("!BBH", nxt, 0x80 if critical else 0, 4 + len(body)) + body


@pytest.mark.parametrize("ptype,body", [
    (PayloadType.NONCE, b"x" * 15),                       # §3.9: nonce 16..256
    (PayloadType.NONCE, b"x" * 257),
    (PayloadType.KE, b"\x00\x1f\x00"),
    (PayloadType.IDi, b"\x02\x00\x00\x00"),               # no identification data
    (PayloadType.AUTH, b"\x02\x00\x00"),
    (PayloadType.NOTIFY, b"\x03\x04\x40\x00\x01"),        # SPI size 4, only 1 byte
    (PayloadType.DELETE, b"\x03\x04\x00\x02" + b"\x00" * 4),   # says 2 SPIs, has 1
    (PayloadType.DELETE, b"\x01\x00\x00\x01"),            # SPI size 0 with a count
    (PayloadType.TSi, b"\x01\x00\x00\x00" + struct.pack("!BBHHH", 7, 0, 17, 0, 65535) + b"\0" * 9),
    (PayloadType.TSi, b"\x02\x00\x00\x00" + struct.pack("!BBHHH", 7, 0, 16, 0, 65535) + b"\0" * 8),
    (PayloadType.TSi, b"\x00\x00\x00\x00"),
    (PayloadType.TSi, b"\x01\x00\x00\x00" + struct.pack("!BBHHH", 7, 0, 16, 0, 65535) +   # 10.0.0.9 - 10.0.0.1
     bytes((10, 0, 0, 9, 10, 0, 0, 1))),
    (PayloadType.TSr, b"\x01\x00\x00\x00" + struct.pack("!BBHHH", 8, 0, 40, 0, 65535) +
     bytes(15) + b"\x02" + bytes(15) + b"\x01"),                                          # IPv6 ::2 - ::1
    (PayloadType.SA, b""),
    (PayloadType.SA, struct.pack("!BBHBBBB", 0, 0, 8, 1, 1, 0, 1)),             # 1 transform, none present
    (PayloadType.SA, struct.pack("!BBHBBBB", 2, 0, 8, 1, 1, 0, 0)),             # "more" but nothing follows
    (PayloadType.SA, struct.pack("!BBHBBBB", 0, 0, 16, 1, 1, 0, 1) + struct.pack("!BBHBBH", 3, 0, 8, 1, 0, 12)),
    (PayloadType.SA, struct.pack("!BBHBBBB", 0, 0, 20, 1, 1, 0, 1) +
     struct.pack("!BBHBBH", 0, 0, 12, 1, 0, 12) + struct.pack("!HH", 0x000E, 8)),   # TLV attr overruns
])
def test_malformed_payloads_are_invalid_syntax(ptype, body):
    data = _chain(ptype, body)
    with pytest.raises(SyntaxError_):
        decode_chain(ptype, data, 0, len(data))


def test_payload_length_rules():
    good = _chain(PayloadType.VENDOR, b"abc")
    for bad in (good[:2] + b"\x00\x03" + good[4:],               # length < 4
                good[:2] + b"\x00\x20" + good[4:],               # runs past the end
                good + b"\x00"):                                  # trailing garbage
        with pytest.raises(SyntaxError_):
            decode_chain(PayloadType.VENDOR, bad, 0, len(bad))


def test_unknown_payloads():
    data = _chain(200, b"hello")
    out, _ = decode_chain(200, data, 0, len(data))
    assert out == [RawPayload(200, b"hello")]
    data = _chain(200, b"hello", critical=True)
    with pytest.raises(UnsupportedCritical) as e:
        decode_chain(200, data, 0, len(data))
    assert e.value.payload_type == 200


def test_sk_must_be_last():
    sk = _chain(PayloadType.SK, b"\0" * 40, nxt=PayloadType.VENDOR)
    data = sk + _chain(PayloadType.VENDOR, b"x")
    with pytest.raises(SyntaxError_):
        decode_chain(PayloadType.SK, data, 0, len(data))


def test_transform_with_unknown_attribute_is_marked():
    body = struct.pack("!BBHBBBB", 0, 0, 20, 1, 1, 0, 1) + struct.pack("!BBHBBH", 0, 0, 12, 1, 0, 12) + \
        struct.pack("!HH", 0x8000 | 99, 1)
    sa = SaPayload.decode(body)
    assert sa.proposals[0].transforms[0].unknown_attr


def test_counts_are_capped():
    from host.ike.payloads import MAX_PAYLOADS
    data = b"".join(_chain(PayloadType.VENDOR, b"", nxt=PayloadType.VENDOR) for _ in range(MAX_PAYLOADS + 1))
    data = data[:-4] + _chain(PayloadType.VENDOR, b"")
    with pytest.raises(SyntaxError_):
        decode_chain(PayloadType.VENDOR, data, 0, len(data))


def test_ts_operations():
    a = TrafficSelector.from_network("10.0.0.0/8")
    b = TrafficSelector.from_network("10.1.2.0/24", 6, (80, 80))
    assert a.contains(b) and not b.contains(a)
    assert a.intersect(b) == b
    c = TrafficSelector.from_network("192.0.2.0/24")
    assert a.intersect(c) is None
    v6 = TrafficSelector.from_network("2001:db8::/32")
    assert a.intersect(v6) is None
