"""What a review of the daemon found an attacker could do, each as a test that failed before its fix:
an IKE message's size and the SA decode cache (parsing unauthenticated input before any limit),
fragment memory shared by every half-open SA, COOKIEs that amplified, a control request that
dropped its connection, keys that outlived their SA and IVs that trusted the RNG."""
import asyncio
import json
import os

from host import control
from host.ike import crypto, fragments, payloads
from host.ike.config import parse_connections
from host.ike.constants import ExchangeType, Flag, Notify, PayloadType
from host.ike.engine import EngineSettings, IkeEngine
from host.ike.events import IkeSaUp
from host.ike.loopback import Network
from host.ike.message import Message, parse_header, parse_plain
from host.ike.payloads import NotifyPayload, Proposal, SaPayload, Transform
from tests.test_engine import A, A_NET, ALL, B, B_NET, conn, kinds, pair


def init_request():
    """An IKE_SA_INIT request as our initiator sends it (A -> B)."""
    a, b, _ = pair()
    a.initiate("gw", 0.0)
    (d,) = a.datagrams_to_send(0.0)
    return d.data, b


# ---- an IKE message's size, and what parsing it may keep ----------------------------------------

def test_an_ike_message_over_max_packet_is_dropped_before_it_is_parsed():
    data, b = init_request()
    hdr = parse_header(data)
    ps, _ = parse_plain(hdr, data)
    big = Message(hdr.spi_i, hdr.spi_r, hdr.exchange, hdr.flags, hdr.mid,
                  ps + [NotifyPayload(40001, bytes(10000 - len(data)))]).encode()   # status: ignored if parsed
    assert len(big) > EngineSettings().max_packet == 10000
    b.receive_datagram(big, (A, 500), 0.0, (B, 500))
    assert b.datagrams_to_send(0.0) == [] and b.half_open_count() == 0
    assert b.stats["too_big"] == 1 and b.stats["malformed"] == 0
    b.receive_datagram(data, (A, 500), 0.0, (B, 500))       # the same request at its own size is answered
    assert len(b.datagrams_to_send(0.0)) == 1 and b.half_open_count() == 1


def test_the_sa_decode_cache_is_bounded_in_bytes():
    """Offers decoded while parsing (before cookies or half-open limits) are cached by their bytes:
    a flood of distinct offers must not make the cache grow beyond SA_CACHE_BYTES."""
    bodies = []
    for i in range(600):
        ts = [Transform(1, 12, 1 + (i * 64 + k) % 65535) for k in range(60)]
        bodies.append(SaPayload([Proposal(1, 1, b"", ts)]).body())
    assert all(700 < len(b) <= payloads.SA_CACHE_ENTRY for b in bodies)
    for b in bodies:
        SaPayload.decode(b)
        assert payloads.sa_cache_bytes() <= payloads.SA_CACHE_BYTES
    assert SaPayload.decode(bodies[-1]) is SaPayload.decode(bodies[-1])     # it still caches
    huge = SaPayload([Proposal(n + 1, 1, b"", [Transform(1, 12, 128 + k) for k in range(60)])
                      for n in range(8)]).body()
    before = payloads.sa_cache_bytes()
    assert SaPayload.decode(huge) is not SaPayload.decode(huge)             # no real offer is that long
    assert payloads.sa_cache_bytes() == before


# ---- fragment memory per peer address ------------------------------------------------------------

def test_fragments_parked_by_many_half_open_sas_do_not_keep_out_another_peers_ike_auth(monkeypatch):
    """Half-open SAs are cheap to make, and each may park all but one fragment of a message:
    from one address they hold at most MAX_HELD_PER_PEER, and a peer that needs room in MAX_HELD
    takes it from the address holding the most. (MAX_HELD is scaled down from 8 MB to exactly
    what three attacker addresses hold: full, as 128 addresses, or before one, would keep it.)"""
    attackers = ["192.0.2.%d" % i for i in (11, 12, 13)]
    legit = "192.0.2.20"
    b = IkeEngine(parse_connections({"gw": conn(B, "192.0.2.0/24", "b.example", "a.example", B_NET, A_NET)}),
                  ALL, settings=EngineSettings(cookie_threshold=0, cookie_threshold_ip=0))
    b.strict = True
    net = Network()
    net.add(B, b)
    engines = {}
    for ip in attackers + [legit]:
        e = IkeEngine(parse_connections({"gw": conn(ip, B, "a.example", "b.example", A_NET, B_NET)}), ALL,
                      settings=EngineSettings(fragment_size=200 if ip == legit else 1280))
        e.strict = True
        engines[ip] = e
        net.add(ip, e)
    # the attackers finish IKE_SA_INIT, never IKE_AUTH: it is replaced by fragments they park
    net.loss = lambda d: d.local[0] in attackers and parse_header(d.data).exchange == ExchangeType.IKE_AUTH
    for ip in attackers:
        for _ in range(3):
            engines[ip].initiate("gw", 0.0)
    net.pump(0.0)
    assert b.half_open_count() == 9
    for ip in attackers:
        for sa in engines[ip].ike_sas():
            frags = Message(sa.spi_i, sa.spi_r, ExchangeType.IKE_AUTH, Flag.INITIATOR, 1,
                            [NotifyPayload(40000, bytes(30000))]).encode_fragments(sa.cipher, 1100)
            for d in frags[:-1]:
                b.receive_datagram(d, (ip, 500), 0.1, (B, 500))
    monkeypatch.setattr(fragments, "MAX_HELD", b.ctx.fragment_bytes)
    net.loss = None
    engines[legit].initiate("gw", 0.2)
    net.pump(0.2)
    assert kinds(net.events[legit], IkeSaUp), b.stats            # its fragmented IKE_AUTH went through
    assert engines[legit].stats["fragments_sent"] > 1 and b.stats["fragmented_messages_received"] == 1
    for ip in attackers:
        held = sum(s.reassembly.size for s in b.ctx.half_open.values() if s.reassembly and s.remote[0] == ip)
        assert held <= 2 * fragments.MAX_MESSAGE
    assert b.ctx.fragment_bytes <= fragments.MAX_HELD


# ---- COOKIEs never amplify ------------------------------------------------------------------------

def test_a_cookie_answers_only_a_request_with_sa_ke_and_nonce():
    """§2.6: the COOKIE answers the IKE_SA_INIT request it would let through. A header and a
    Nonce (48 bytes) got a 72-byte COOKIE; now it gets the exchange's INVALID_SYNTAX, shorter
    than what it answers, rate-limited."""
    data, b = init_request()
    b.settings.cookie_threshold = 1
    b.receive_datagram(data, (A, 500), 0.0, (B, 500))        # one half-open SA: COOKIEs are demanded
    assert b.half_open_count() == 1
    b.datagrams_to_send(0.0)
    hdr = parse_header(data)
    ps, _ = parse_plain(hdr, data)
    nonce = [p for p in ps if p.ptype == PayloadType.NONCE]
    for keep in ([PayloadType.NONCE], [PayloadType.NONCE, PayloadType.SA], [PayloadType.NONCE, PayloadType.KE]):
        probe = Message(os.urandom(8), hdr.spi_r, hdr.exchange, hdr.flags, 0,
                        [p for p in ps if p.ptype in keep] if keep != [PayloadType.NONCE] else nonce).encode()
        b.receive_datagram(probe, ("198.51.100.7", 500), 1.0, (B, 500))
        for d in b.datagrams_to_send(1.0):
            got, _ = parse_plain(parse_header(d.data), d.data)
            assert len(d.data) <= len(probe), (keep, len(d.data), len(probe))
            assert not [p for p in got if getattr(p, "notify_type", None) == Notify.COOKIE], keep
    full = Message(os.urandom(8), hdr.spi_r, hdr.exchange, hdr.flags, 0, ps).encode()
    b.receive_datagram(full, ("198.51.100.7", 500), 1.0, (B, 500))   # the whole request does get one
    (d,) = b.datagrams_to_send(1.0)
    got, _ = parse_plain(parse_header(d.data), d.data)
    assert got[0].notify_type == Notify.COOKIE and len(d.data) < len(full)


# ---- the control socket ---------------------------------------------------------------------------

def test_a_control_request_with_a_wrong_type_gets_an_error_and_the_connection_stays(tmp_path):
    async def handler(req):
        if req["cmd"] == "initiate":
            return {"known": req["conn"] in {"gw": 1}}     # what the daemon does with conn
        raise ZeroDivisionError("a bug in a handler")

    async def main():
        path = str(tmp_path / "ctl.sock")
        srv = control.ControlServer(path, handler)
        await srv.start()
        reader, writer = await asyncio.open_unix_connection(path)

        async def ask(line):
            writer.write(line.encode() + b"\n")
            await writer.drain()
            return json.loads(await asyncio.wait_for(reader.readline(), 5))
        try:
            r = await ask('{"cmd":"initiate","conn":["x"]}')
            assert r == {"ok": False, "error": "initiate: conn must be a string, not list"}, r
            assert (await ask('{"cmd":"initiate"}'))["error"] == "initiate needs conn"
            assert "takes no field" in (await ask('{"cmd":"stats","x":1}'))["error"]
            assert "must be an integer" in (await ask('{"cmd":"terminate","ike_id":true}'))["error"]
            assert "unknown command" in (await ask('[1]'))["error"] + (await ask('{"cmd":5}'))["error"]
            assert (await ask('{"cmd":"stats"}'))["error"] == "internal error: ZeroDivisionError"
            assert await ask('{"cmd":"initiate","conn":"gw"}') == {"ok": True, "result": {"known": True}}
        finally:
            writer.close()
            await srv.close()
    asyncio.run(main())


# ---- keys and IVs ---------------------------------------------------------------------------------

def test_a_dead_ike_sa_keeps_no_keys():
    a, b, net = pair()
    a.initiate("gw", 0.0)
    net.pump(0.0)
    (sa_a,), (sa_b,) = a.ike_sas(), b.ike_sas()
    children = list(sa_a.children.values()) + list(sa_b.children.values())
    assert sa_a.keys is not None and sa_b.cipher is not None
    a.delete_ike(sa_a.ike_id, 1.0)
    net.pump(1.0)
    assert a.ike_sas() == b.ike_sas() == []
    for sa in (sa_a, sa_b):
        assert (sa.keys, sa.cipher, sa.dh_priv) == (None, None, None)
    assert children and all(c.keys is None for c in children)


def test_cbc_ivs_do_not_depend_on_the_rng(monkeypatch):
    """An IKE SA with AES-CBC: every message's IV is new and unpredictable even when the RNG
    is not (RFC 7296 §3.14; a counter encrypted under the SA's key)."""
    monkeypatch.setattr(os, "urandom", lambda n: bytes(n))
    sk = crypto.make_sk_cipher(12, 12, b"K" * 16, b"L" * 16, b"a" * 32, b"b" * 32)
    ivs = [sk.seal(b"aad", bytes(32))[:16] for _ in range(100)]
    assert len(set(ivs)) == 100 and bytes(16) not in ivs
    other = crypto.make_sk_cipher(12, 12, b"M" * 16, b"L" * 16, b"a" * 32, b"b" * 32)
    assert not set(ivs) & {other.seal(b"aad", bytes(32))[:16] for _ in range(100)}    # per key
    peer = crypto.make_sk_cipher(12, 12, b"L" * 16, b"K" * 16, b"b" * 32, b"a" * 32)
    assert peer.open_(b"aad" + sk.seal(b"aad", b"x" * 32), 3) == b"x" * 32

