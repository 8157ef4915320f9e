"""Message codecs: round trips, and every truncation is a MessageError (never a crash)."""
from firmware.link import messages as m

V4 = (b"\xc0\x00\x02\x01", 4500)
V6 = (b"\x20\x01\x0d\xb8" + b"\x00" * 11 + b"\x01", 500)


def expect_error(fn, arg, exc=m.MessageError):
    try:
        fn(arg)
    except exc:
        return
    raise AssertionError("no %s for %r" % (exc.__name__, arg))


def every_truncation_fails(decode, body):
    for n in range(len(body)):
        expect_error(decode, body[:n])
    expect_error(decode, body + b"\x00")


def sample_hello():
    return m.Hello(b"\x01\x02\x03\x04\x05\x06\x07\x08", "esp32-devkitc", "0.1.0", m.RESET_WDT, 64, 4096,
                   8, 3000, m.FEAT_ESN | m.FEAT_UDP_ENCAP,
                   [m.Transform(m.ENCR_AES_CBC, 128, m.AUTH_HMAC_SHA2_256_128, "cryptolib", m.SPEED_FAST),
                    m.Transform(m.ENCR_AES_GCM_16, 256, m.AUTH_NONE, "pure", m.SPEED_SLOW)], 16)


def sample_spec():
    return m.SaSpec(0xC0FFEE01, m.DIR_OUT, m.ENCR_AES_CBC, b"K" * 16, m.AUTH_HMAC_SHA2_256_128, b"I" * 32,
                    m.MODE_TRANSPORT, m.SAF_ESN | m.SAF_UDP_ENCAP, 1024, 1 << 40, 1 << 41, 1000, 2000,
                    V4, V6, 77, [(b"\x0a\x00\x00\x00", b"\x0a\x00\x00\xff", 0, 0, 65535)],
                    [(b"\x00" * 16, b"\xff" * 16, 17, 500, 500)], 0xFFFFFFF0)


def test_hello_round_trip_and_truncation():
    h = sample_hello()
    body = h.encode()
    assert m.Hello.decode(body) == h
    assert m.Hello.decode(body).transforms[0].key() == (12, 128, 12)
    every_truncation_fails(m.Hello.decode, body)


def test_heartbeat_ack_round_trip():
    a = m.HeartbeatAck(b"abcdefgh", (1 << 40) + 5, 17, 123456, 2, 99)
    body = a.encode()
    assert m.HeartbeatAck.decode(body) == a
    every_truncation_fails(m.HeartbeatAck.decode, body)


def test_sa_spec_round_trip_all_fields():
    s = sample_spec()
    assert m.SaSpec.decode(s.encode()) == s
    minimal = m.SaSpec(0x100, m.DIR_IN, m.ENCR_AES_GCM_16, b"k" * 20)
    got = m.SaSpec.decode(minimal.encode())
    assert got == minimal and got.replay_window == 64 and got.src is None


def _tlvs(body):
    out, i = [], 0
    while i < len(body):
        j = i + 3 + (body[i + 1] << 8 | body[i + 2])
        out.append((body[i], body[i + 3:j]))
        i = j
    return out


def test_sa_spec_keeps_addresses_and_selectors_in_wire_form():
    s = sample_spec()
    ts_l = [(b"\x0a\x00\x00\x00", b"\x0a\x00\x00\xff", 0, 0, 65535)]
    ts_r = [(b"\x00" * 16, b"\xff" * 16, 17, 500, 500)]
    # read back as given, and encoded as before: in type order, A_INITIAL_SEQ after the lifetimes
    assert (s.src, s.dst, s.reqid, s.ts_local, s.ts_remote) == (V4, V6, 77, ts_l, ts_r)
    tlvs = _tlvs(s.encode())
    assert [t for t, _ in tlvs] == list(range(1, 14)) + [19, 14, 15, 16, 17, 18], tlvs
    d = dict(tlvs)
    assert d[m.A_SRC] == b"\x04\xc0\x00\x02\x01\x11\x94" == m.w_addr(V4) and d[m.A_DST] == m.w_addr(V6)
    assert d[m.A_TS_LOCAL] == b"\x04\x0a\x00\x00\x00\x0a\x00\x00\xff\x00\x00\x00\xff\xff" == m.w_ts(ts_l)
    assert d[m.A_TS_REMOTE] == m.w_ts(ts_r)
    got = m.SaSpec.decode(s.encode())
    for t in (m.A_SRC, m.A_DST, m.A_TS_LOCAL, m.A_TS_REMOTE):
        assert got.wire(t) == s.wire(t) == d[t], t
    assert got.encode() == s.encode()
    # absent: None and no selectors; an address of family 0 is no address
    bare = m.SaSpec(0x100, m.DIR_IN, m.ENCR_AES_GCM_16, b"k" * 20, reqid=5)
    assert (bare.src, bare.dst, bare.ts_local, bare.ts_remote) == (None, None, [], [])
    assert bare.wire(m.A_SRC) is None
    body = bare.encode()
    fam0 = m.SaSpec.decode(body + b"\x0e\x00\x01\x00")
    assert fam0 == bare and fam0.wire(m.A_SRC) is None and fam0.encode() == body
    plain = m.SaSpec(0x100, 0, 20, b"k" * 20)
    assert m.SaSpec(0x100, 0, 20, b"k" * 20, ts_local=[], src=None).encode() == plain.encode()
    # the constructor refuses what has no wire form
    for kw in ({"src": (b"\x01\x02\x03", 1)}, {"ts_remote": [(bytes(4), bytes(16), 0, 0, 1)]}):
        try:
            m.SaSpec(0x100, 0, 20, b"k" * 20, **kw)
        except m.MessageError:
            continue
        raise AssertionError(kw)


def test_sa_spec_refuses_malformed_addresses_and_selectors():
    base = m.SaSpec(0x100, m.DIR_IN, m.ENCR_AES_GCM_16, b"k" * 20).encode()
    sel = m.w_ts([(bytes(4), bytes(4), 0, 0, 65535)])
    for t, v in ((m.A_SRC, b""), (m.A_SRC, b"\x05" + bytes(6)), (m.A_DST, b"\x04" + bytes(5)),
                 (m.A_DST, b"\x04" + bytes(7)), (m.A_SRC, b"\x06" + bytes(17)), (m.A_SRC, b"\x00\x00"),
                 (m.A_TS_LOCAL, sel[:-1]), (m.A_TS_LOCAL, sel + b"\x04"),
                 (m.A_TS_REMOTE, b"\x05" + bytes(15)), (m.A_TS_REMOTE, sel * (m.MAX_TS + 1))):
        expect_error(m.SaSpec.decode, base + bytes((t, len(v) >> 8, len(v) & 255)) + v)
    full = m.SaSpec.decode(base + bytes((m.A_TS_LOCAL, 0, 14 * m.MAX_TS)) + sel * m.MAX_TS)
    assert len(full.ts_local) == m.MAX_TS


def test_sa_spec_rejects_malformed():
    good = sample_spec().encode()
    # A TLV list cut at an attribute boundary is a shorter valid list; cut anywhere else
    # (or before the required attributes) it must be refused, never crash.
    boundaries = set()
    i = 0
    while i < len(good):
        i += 3 + (good[i + 1] << 8 | good[i + 2])
        boundaries.add(i)
    for n in range(len(good)):
        if n in boundaries and n >= 4 * 3 + 4 + 1 + 2 + 16:
            m.SaSpec.decode(good[:n])
        else:
            expect_error(m.SaSpec.decode, good[:n])
    # a repeated attribute, a missing SPI, a reserved SPI, an oversize window, a bad length
    expect_error(m.SaSpec.decode, good + b"\x01\x00\x04\x00\x00\x10\x00")
    no_spi = m.SaSpec(0x100, 0, 20, b"k").encode()[7:]
    expect_error(m.SaSpec.decode, no_spi)
    expect_error(m.SaSpec.decode, m.SaSpec(0xff, 0, 20, b"k").encode())
    expect_error(m.SaSpec.decode, m.SaSpec(0x100, 0, 20, b"k", replay_window=2048).encode())
    expect_error(m.SaSpec.decode, m.SaSpec(0x100, 0, 20, b"k" * 65).encode())
    expect_error(m.SaSpec.decode, m.SaSpec(0x100, 3, 20, b"k").encode())


def test_sa_spec_critical_and_optional_attributes():
    base = m.SaSpec(0x100, 0, 20, b"k" * 20).encode()
    expect_error(m.SaSpec.decode, base + b"\x3f\x00\x01\x00", m.UnsupportedAttribute)
    assert m.SaSpec.decode(base + b"\x9f\x00\x02\xab\xcd").spi == 0x100


def test_sa_spec_repr_never_shows_keys():
    r = repr(sample_spec())
    assert "KKKK" not in r and "IIII" not in r and "c0ffee01" in r


def test_sad_reply_stats_and_refs():
    r = m.SadReply(m.OK, 7, 3, 1)
    assert m.SadReply.decode(r.encode()) == r
    every_truncation_fails(m.SadReply.decode, r.encode())
    assert m.decode_sa_ref(m.encode_sa_ref(0x12345678, 1)) == (0x12345678, 1)
    recs = [m.SaStats(0x1000 + i, i % 2, 0, i, i * 100, 1, 2, (1 << 33) + i, 5) for i in range(3)]
    body = m.StatsReply(m.OK, 10, recs).encode()
    assert len(body) == 5 + 3 * m.SaStats.SIZE
    got = m.StatsReply.decode(body)
    assert got.total == 10 and got.records == recs
    assert m.decode_stats_request(m.encode_stats_request(4, 9)) == (4, 9)


def test_batches_round_trip_and_limits():
    items = [(0x1000, b"p" * 1400), (0x2000, b""), (0x3000, b"\x00" * 64)]
    body = m.encode_encrypt_request(items)
    assert m.decode_encrypt_request(body, 8) == items
    expect_error(lambda b: m.decode_encrypt_request(b, 2), body)  # more items than max_batch
    every_truncation_fails(lambda b: m.decode_encrypt_request(b, 8), body)
    rep = [(m.P_OK, b"e" * 1436), (m.P_UNKNOWN_SPI, b"")]
    assert m.decode_encrypt_reply(m.encode_encrypt_reply(rep)) == (m.OK, rep)
    ditems = [(V4, b"\x00\x00\x10\x00" + b"x" * 40), (None, b"\xff"), (V6, b"y")]
    assert m.decode_decrypt_request(m.encode_decrypt_request(ditems), 8) == ditems
    drep = [(m.P_OK, 0x1000, b"ip"), (m.P_REPLAY, 0x1000, b"")]
    assert m.decode_decrypt_reply(m.encode_decrypt_reply(drep)) == (m.OK, drep)
    assert m.decode_decrypt_reply(bytes((m.TOO_BIG,))) == (m.TOO_BIG, [])


def test_events_round_trip():
    u = m.UnknownSpi([(0xdead, V4, 3), (0xbeef, None, 1)], 250)
    assert m.UnknownSpi.decode(u.encode()) == u
    every_truncation_fails(m.UnknownSpi.decode, u.encode())
    x = m.SaExpire(0x1000, m.DIR_OUT, True, m.EXP_SEQ, 42)
    assert m.SaExpire.decode(x.encode()) == x
    f = m.Flushed(m.FLUSH_HOST_SILENCE, 12, 99)
    assert m.Flushed.decode(f.encode()) == f
    st, d = m.decode_counters_reply(m.encode_counters_reply([("frames", 5), ("big", 1 << 50)]))
    assert st == m.OK and d == {"frames": 5, "big": 1 << 50}


def test_bad_address_family_rejected():
    expect_error(lambda b: m.decode_decrypt_request(b, 4), b"\x00\x01\x05" + b"\x00" * 8)
