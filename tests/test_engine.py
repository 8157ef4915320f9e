"""The IKE engine end to end in memory: our initiator against our responder, both real engines with
real crypto, datagrams moved by host.ike.loopback.Network (no sockets)."""

import pytest

from host.ike.config import RetransmitPolicy, parse_connections
from host.ike.constants import ExchangeType, Flag, Notify, PayloadType
from host.ike.engine import EngineSettings, IkeEngine
from host.ike.events import (
    ChildSaDelete, ChildSaFailed, ChildSaInstall, ChildSaUp, IkeSaDown, IkeSaMoved, IkeSaUp,
)
from host.ike.loopback import Network, drain
from host.ike.message import Message, parse_header, parse_plain
from host.ike.payloads import NotifyPayload
from host.ike.proposals import OffloadCapabilities
from host.ike.crypto import make_sk_cipher
from cryptography.hazmat.primitives import hashes, hmac
from testbed.pki import TestCa

A, B = "192.0.2.1", "192.0.2.2"
A_NET, B_NET = "198.51.100.0/24", "203.0.113.0/24"
ALL = OffloadCapabilities.from_proposals(["aes128gcm16", "aes256gcm16", "aes128-sha256", "aes256-sha256"])
PSK = "test-psk-0123456789abcdef"


def prf_plus(alg, key: bytes, seed: bytes, n: int) -> bytes:
    """RFC 7296 §2.13 prf+ over HMAC, written out from the RFC (T1 = prf(K, S | 0x01), ...)."""
    out, t, i = b"", b"", 1
    while len(out) < n:
        h = hmac.HMAC(key, alg())
        h.update(t + seed + bytes((i,)))
        t = h.finalize()
        out += t
        i += 1
    return out[:n]


def conn(local, remote, lid, rid, lts, rts, ike="aes256gcm16-prfsha256-x25519", esp="aes256gcm16",
         auth="psk", psk=PSK, extra=None, child_extra=None, children=None):
    c = {"local_addrs": [local], "remote_addrs": [remote], "proposals": ike if isinstance(ike, list) else [ike],
         "local": {"auth": auth, "id": lid}, "remote": {"auth": auth, "id": rid}}
    if psk:
        c["psk"] = psk
    ch = {"local_ts": [lts], "remote_ts": [rts], "esp_proposals": esp if isinstance(esp, list) else [esp]}
    ch.update(child_extra or {})
    c["children"] = children if children is not None else {"net": ch}
    c.update(extra or {})
    return c


def engine(conn_dict, caps=ALL, strict=True, **kw):
    """One engine with connection "gw"; strict as in :func:`pair`."""
    e = IkeEngine(parse_connections({"gw": conn_dict}), caps, **kw)
    e.strict = strict
    return e


def pair(a_conn=None, b_conn=None, caps_a=ALL, caps_b=ALL, retransmit=None, settings_b=None, settings_a=None,
         strict=True, **kw):
    """Two engines a (A) and b (B) on a loopback Network. ``strict``: an internal error inside
    either engine raises instead of being counted in stats["internal_errors"] (the daemon's
    mode), so a test that expects a message to be ignored cannot pass over a crash."""
    a_conn = a_conn or conn(A, B, "a.example", "b.example", A_NET, B_NET, **kw)
    b_conn = b_conn or conn(B, A, "b.example", "a.example", B_NET, A_NET, **kw)
    a = engine(a_conn, caps_a, strict, settings=settings_a, retransmit=retransmit)
    b = engine(b_conn, caps_b, strict, settings=settings_b, retransmit=retransmit)
    net = Network()
    net.add(A, a)
    net.add(B, b)
    return a, b, net


def established(settings_a=None, settings_b=None):
    """pair() with an IKE SA up between them, a the initiator."""
    a, b, net = pair(settings_a=settings_a, settings_b=settings_b)
    a.initiate("gw", 0.0)
    net.pump(0.0)
    return a, b, net


def kinds(events, cls):
    return [e for e in events if isinstance(e, cls)]


@pytest.mark.parametrize("ike,esp", [
    ("aes256gcm16-prfsha256-x25519", "aes256gcm16"),
    ("aes128-sha256-modp2048", "aes128-sha256"),
    ("aes128gcm16-prfsha256-ecp256", "aes128gcm16"),
    ("aes256-sha512-prfsha384-x25519", "aes128gcm16"),
])
def test_psk_establishes_and_keys_agree(ike, esp):
    a, b, net = pair(ike=ike, esp=esp)
    a.initiate("gw", 0.0)
    net.pump(0.0)
    ia, ib = kinds(net.events[A], ChildSaInstall), kinds(net.events[B], ChildSaInstall)
    assert len(ia) == len(ib) == 1
    x, y = ia[0], ib[0]
    assert (x.spi_in, x.spi_out) == (y.spi_out, y.spi_in)
    assert (x.key_out, x.salt_out, x.integ_key_out) == (y.key_in, y.salt_in, y.integ_key_in)
    assert (x.key_in, x.salt_in, x.integ_key_in) == (y.key_out, y.salt_out, y.integ_key_out)
    assert x.key_in != x.key_out
    if "gcm" in esp:
        assert len(x.salt_in) == 4 and x.integ == 0 and x.integ_key_in == b""
    else:
        assert x.salt_in == b"" and x.integ == 12 and len(x.integ_key_in) == 32
    assert x.encap and x.local_port == 4500 and x.remote_port == 4500      # NAT-T forced (encap)
    assert [str(t) for t in x.local_ts] == [str(t) for t in y.remote_ts]
    assert len(kinds(net.events[A], IkeSaUp)) == len(kinds(net.events[B], IkeSaUp)) == 1
    assert len(kinds(net.events[A], ChildSaUp)) == len(kinds(net.events[B], ChildSaUp)) == 1
    assert "redacted" in repr(x) and x.key_in.hex() not in repr(x)
    # KEYMAT and its split derived here with the cryptography library's HMAC, not the engine's
    # prf+ (§2.13, §2.17: initiator->responder keys first, each encryption key (+ AEAD salt,
    # RFC 4106 §8.1) before its integrity key)
    sa = a.ike_sa(x.ike_id)
    prf = {"prfsha256": hashes.SHA256, "prfsha384": hashes.SHA384}[ike.split("-")[-2]] \
        if "prf" in ike else hashes.SHA256
    enc_len = x.encr_key_bits // 8 + (4 if "gcm" in esp else 0)
    integ_len = 0 if "gcm" in esp else 32
    km = prf_plus(prf, sa.keys.sk_d, sa.ni + sa.nr, 2 * (enc_len + integ_len))
    i_to_r, r_to_i = km[:enc_len + integ_len], km[enc_len + integ_len:]
    assert x.key_out + x.salt_out + x.integ_key_out == i_to_r         # a initiated: it sends i->r
    assert x.key_in + x.salt_in + x.integ_key_in == r_to_i


def test_sk_direction_uses_sk_ei_for_the_initiator():
    """§2.14: the initiator encrypts with SK_ei/SK_ai; checked with an independently built cipher."""
    a, b, net = pair(ike="aes128-sha256-x25519")
    a.initiate("gw", 0.0)
    net.pump(0.0)
    sa = a.ike_sa(kinds(net.events[A], IkeSaUp)[0].ike_id)
    a.check_liveness(sa.ike_id, 1.0)
    wire = a.datagrams_to_send(1.0)[0].data
    k = sa.keys
    peer_view = make_sk_cipher(12, 12, k.sk_er, k.sk_ei, k.sk_ar, k.sk_ai)
    _, sk = parse_plain(parse_header(wire), wire)
    from host.ike.message import open_sk
    assert open_sk(wire, sk, peer_view) == []


def test_wrong_psk_fails_on_both_sides():
    a, b, net = pair(b_conn=conn(B, A, "b.example", "a.example", B_NET, A_NET, psk="another-psk-0123456789"))
    a.initiate("gw", 0.0)
    net.pump(0.0)
    assert not kinds(net.events[A], IkeSaUp) and not kinds(net.events[B], IkeSaUp)
    da, db = kinds(net.events[A], IkeSaDown), kinds(net.events[B], IkeSaDown)
    assert da and not da[0].established and "AUTHENTICATION_FAILED" in da[0].reason
    assert db and "authentication failed" in db[0].reason
    assert not kinds(net.events[A], ChildSaInstall) and not kinds(net.events[B], ChildSaInstall)
    assert a.ike_sas() == [] and b.ike_sas() == []


def test_wrong_identity_is_refused():
    a, b, net = pair(a_conn=conn(A, B, "mallory.example", "b.example", A_NET, B_NET))
    a.initiate("gw", 0.0)
    net.pump(0.0)
    assert not kinds(net.events[B], IkeSaUp)
    assert kinds(net.events[A], IkeSaDown)


@pytest.mark.parametrize("kind", ["ecdsa", "rsa"])
def test_certificates(tmp_path, kind):
    ca = TestCa("ecdsa")
    (tmp_path / "ca.crt").write_bytes(ca.cert_pem())
    ca.issue("a.example", kind).write(tmp_path, "a")
    ca.issue("b.example", kind).write(tmp_path, "b")

    def c(me, peer, lts, rts, who, other):
        d = conn(me, peer, who, other, lts, rts, auth="pubkey", psk=None)
        d["local"].update(cert=str(tmp_path / f"{who[0]}.crt"), key=str(tmp_path / f"{who[0]}.key"))
        d["remote"]["cacerts"] = [str(tmp_path / "ca.crt")]
        return d
    a, b, net = pair(c(A, B, A_NET, B_NET, "a.example", "b.example"), c(B, A, B_NET, A_NET, "b.example", "a.example"))
    a.initiate("gw", 0.0)
    net.pump(0.0)
    ua, ub = kinds(net.events[A], IkeSaUp), kinds(net.events[B], IkeSaUp)
    assert ua and ub and ua[0].remote_id == "b.example" and ub[0].remote_id == "a.example"
    assert kinds(net.events[A], ChildSaUp)


def test_certificate_from_another_ca_is_refused(tmp_path):
    ca, rogue = TestCa(), TestCa(cn="rogue")
    (tmp_path / "ca.crt").write_bytes(ca.cert_pem())
    rogue.issue("a.example").write(tmp_path, "a")
    ca.issue("b.example").write(tmp_path, "b")

    def c(me, peer, lts, rts, who, other):
        d = conn(me, peer, who, other, lts, rts, auth="pubkey", psk=None)
        d["local"].update(cert=str(tmp_path / f"{who[0]}.crt"), key=str(tmp_path / f"{who[0]}.key"))
        d["remote"]["cacerts"] = [str(tmp_path / "ca.crt")]
        return d
    a, b, net = pair(c(A, B, A_NET, B_NET, "a.example", "b.example"), c(B, A, B_NET, A_NET, "b.example", "a.example"))
    a.initiate("gw", 0.0)
    net.pump(0.0)
    assert not kinds(net.events[B], IkeSaUp)
    assert any("chain" in d.reason for d in kinds(net.events[B], IkeSaDown))


def test_invalid_ke_retry():
    """Initiator guesses x25519, responder only does ecp256: INVALID_KE_PAYLOAD, retry (§1.2)."""
    a, b, net = pair(a_conn=conn(A, B, "a.example", "b.example", A_NET, B_NET,
                                 ike="aes128gcm16-prfsha256-x25519-ecp256"),
                     b_conn=conn(B, A, "b.example", "a.example", B_NET, A_NET, ike="aes128gcm16-prfsha256-ecp256"))
    a.initiate("gw", 0.0)
    net.pump(0.0)
    up = kinds(net.events[A], IkeSaUp)
    assert up and up[0].proposal.endswith("ecp256")
    assert b.stats["error_replies"] == 1


def test_cookie_is_returned_first_with_same_spi():
    a, b, net = pair()
    a.initiate("gw", 0.0)
    first = a.datagrams_to_send(0.0)[0]
    hdr = parse_header(first.data)
    cookie = b"C" * 16
    resp = Message(hdr.spi_i, bytes(8), ExchangeType.IKE_SA_INIT, Flag.RESPONSE, 0,
                   [NotifyPayload(Notify.COOKIE, cookie)]).encode()
    a.receive_datagram(resp, (B, 500), 0.0, (A, 500))
    second = a.datagrams_to_send(0.0)[0]
    h2 = parse_header(second.data)
    payloads, _ = parse_plain(h2, second.data)
    assert h2.spi_i == hdr.spi_i and h2.mid == 0
    assert payloads[0].ptype == PayloadType.NOTIFY and payloads[0].notify_type == Notify.COOKIE
    assert payloads[0].data == cookie
    b.receive_datagram(second.data, (A, 500), 0.0, (B, 500))
    net.pump(0.0)
    assert kinds(net.events[A], IkeSaUp)


def test_retransmission_schedule_and_give_up():
    pol = RetransmitPolicy(timeout=4.0, base=1.8, tries=5)
    a, b, net = pair(retransmit=pol)
    a.initiate("gw", 0.0)
    first = a.datagrams_to_send(0.0)[0].data        # lost
    times, now = [], 0.0
    while True:
        t = a.get_timer()
        if t is None:
            break
        now = t
        a.handle_timer(now)
        sent = a.datagrams_to_send(now)
        if sent:
            assert sent[0].data == first                 # bitwise identical (§2.1)
            times.append(round(now, 3))
    expect, t = [], 0.0
    for n in range(5):
        t += 4.0 * 1.8 ** n
        expect.append(round(t, 3))
    assert times == expect
    down = kinds(drain(a, now), IkeSaDown)
    assert down and "retransmit" in down[0].reason
    assert round(now, 3) == round(t + 4.0 * 1.8 ** 5, 3)
    assert a.ike_sas() == []


def test_responder_resends_cached_response_for_retransmitted_request():
    a, b, net = pair()
    a.initiate("gw", 0.0)
    net.pump(0.0)
    ike_id = kinds(net.events[A], IkeSaUp)[0].ike_id
    a.check_liveness(ike_id, 1.0)
    req = a.datagrams_to_send(1.0)[0]
    b.receive_datagram(req.data, (A, 4500), 1.0, (B, 4500))
    r1 = b.datagrams_to_send(1.0)
    b.receive_datagram(req.data, (A, 4500), 2.0, (B, 4500))
    r2 = b.datagrams_to_send(2.0)
    assert len(r1) == len(r2) == 1 and r1[0].data == r2[0].data
    assert b.stats["retransmits_answered"] == 1
    # a different request with the old message id is not answered
    b.receive_datagram(req.data[:-1] + bytes((req.data[-1] ^ 1,)), (A, 4500), 3.0, (B, 4500))
    assert b.datagrams_to_send(3.0) == []


def test_retransmitted_ike_auth_does_not_install_twice():
    a, b, net = pair()
    a.initiate("gw", 0.0)
    net.pump(0.0)
    auth_req = None
    # replay: re-run from scratch and capture IKE_AUTH
    a, b, net = pair()
    a.initiate("gw", 0.0)
    init = a.datagrams_to_send(0.0)[0]
    b.receive_datagram(init.data, (A, 500), 0.0, (B, 500))
    a.receive_datagram(b.datagrams_to_send(0.0)[0].data, (B, 500), 0.0, (A, 500))
    auth_req = a.datagrams_to_send(0.0)[0]
    assert auth_req.local[1] == 4500 and auth_req.remote[1] == 4500       # floated (§2.23)
    b.receive_datagram(auth_req.data, (A, 4500), 0.0, (B, 4500))
    assert b.datagrams_to_send(0.0) == []          # answer waits for the board (two-phase)
    b.receive_datagram(auth_req.data, (A, 4500), 0.1, (B, 4500))   # retransmission while installing
    assert b.datagrams_to_send(0.1) == []
    ev = drain(b, 0.2, accept=None)
    inst = kinds(ev, ChildSaInstall)
    assert len(inst) == 1
    b.child_sa_installed(inst[0].handle, True, 0.2)
    resp = b.datagrams_to_send(0.2)
    assert len(resp) == 1
    b.receive_datagram(auth_req.data, (A, 4500), 0.3, (B, 4500))
    again = b.datagrams_to_send(0.3)
    assert again[0].data == resp[0].data
    assert not kinds(drain(b, 0.3), ChildSaInstall)


@pytest.mark.parametrize("reason,notify", [("full", "TEMPORARY_FAILURE"), ("unsupported", "NO_PROPOSAL_CHOSEN")])
def test_responder_board_refuses_child_ike_sa_still_up(reason, notify):
    a, b, net = pair()
    net.accept[B] = False
    a.initiate("gw", 0.0)
    # Network.drain answers with reason None; answer by hand to pass the reason
    net.accept[B] = None
    net.pump(0.0)
    inst = kinds(net.events[B], ChildSaInstall)
    assert len(inst) == 1 and not kinds(net.events[B], IkeSaUp)
    b.child_sa_installed(inst[0].handle, False, 0.0, reason)
    net.pump(0.0)
    assert kinds(net.events[A], IkeSaUp) and kinds(net.events[B], IkeSaUp)
    fa = kinds(net.events[A], ChildSaFailed)
    assert fa and notify in fa[0].reason
    assert not kinds(net.events[A], ChildSaInstall)
    assert kinds(net.events[B], ChildSaFailed)
    assert not kinds(net.events[B], ChildSaDelete)


def test_initiator_board_refuses_child_deletes_it_at_peer():
    a, b, net = pair()
    net.accept[A] = False
    a.initiate("gw", 0.0)
    net.pump(0.0)
    assert kinds(net.events[A], IkeSaUp) and kinds(net.events[A], ChildSaFailed)
    assert not kinds(net.events[A], ChildSaUp)
    db = kinds(net.events[B], ChildSaDelete)
    assert len(db) == 1 and db[0].reason == "deleted by peer"
    assert not b.ike_sa(kinds(net.events[B], IkeSaUp)[0].ike_id).children


def test_capabilities_filter_child_proposals():
    cbc_only = OffloadCapabilities.from_proposals(["aes128-sha256"])
    a, b, net = pair(caps_a=cbc_only, esp=["aes256gcm16", "aes128-sha256"])
    a.initiate("gw", 0.0)
    net.pump(0.0)
    x = kinds(net.events[A], ChildSaInstall)[0]
    assert (x.encr, x.encr_key_bits, x.integ) == (12, 128, 12)
    # responder side restricted instead: picks what its board can do from the initiator's offer
    a, b, net = pair(caps_b=cbc_only, esp=["aes256gcm16", "aes128-sha256"])
    a.initiate("gw", 0.0)
    net.pump(0.0)
    y = kinds(net.events[B], ChildSaInstall)[0]
    assert (y.encr, y.integ) == (12, 12)


def test_board_that_can_do_nothing_gives_ike_sa_without_child():
    none = OffloadCapabilities(frozenset())
    a, b, net = pair(caps_b=none)
    a.initiate("gw", 0.0)
    net.pump(0.0)
    assert kinds(net.events[A], IkeSaUp) and kinds(net.events[B], IkeSaUp)
    assert "NO_PROPOSAL_CHOSEN" in kinds(net.events[A], ChildSaFailed)[0].reason
    assert not kinds(net.events[B], ChildSaInstall)


def test_ts_narrowing():
    a, b, net = pair(a_conn=conn(A, B, "a.example", "b.example", "198.51.100.0/24", "203.0.113.0/24"),
                     b_conn=conn(B, A, "b.example", "a.example", "203.0.113.128/25[tcp]", "198.51.100.7"))
    a.initiate("gw", 0.0)
    net.pump(0.0)
    x = kinds(net.events[A], ChildSaInstall)[0]
    assert [str(t) for t in x.local_ts] == ["TS(198.51.100.7-198.51.100.7 proto=0 ports=0-65535)"]
    assert [str(t) for t in x.remote_ts] == ["TS(203.0.113.128-203.0.113.255 proto=6 ports=0-65535)"]


def test_ts_unacceptable_keeps_ike_sa():
    a, b, net = pair(b_conn=conn(B, A, "b.example", "a.example", "10.9.9.0/24", A_NET))
    a.initiate("gw", 0.0)
    net.pump(0.0)
    assert kinds(net.events[A], IkeSaUp)
    assert "TS_UNACCEPTABLE" in kinds(net.events[A], ChildSaFailed)[0].reason


@pytest.mark.parametrize("pfs", [False, True])
def test_create_child_sa(pfs):
    children = {"net": {"local_ts": [A_NET], "remote_ts": [B_NET], "esp_proposals": ["aes256gcm16"]},
                "more": {"local_ts": ["198.51.100.5"], "remote_ts": ["203.0.113.5"],
                         "esp_proposals": ["aes128-sha256" + ("-ecp256" if pfs else "")]}}
    bchildren = {"net": {"local_ts": [B_NET], "remote_ts": [A_NET], "esp_proposals": ["aes256gcm16"]},
                 "more": {"local_ts": ["203.0.113.5"], "remote_ts": ["198.51.100.5"],
                          "esp_proposals": ["aes128-sha256" + ("-ecp256" if pfs else "")]}}
    a, b, net = pair(a_conn=conn(A, B, "a.example", "b.example", A_NET, B_NET, children=children),
                     b_conn=conn(B, A, "b.example", "a.example", B_NET, A_NET, children=bchildren))
    ike_id = a.initiate("gw", 0.0)
    net.pump(0.0)
    a.create_child(ike_id, "more", 1.0)
    net.pump(1.0)
    ia, ib = kinds(net.events[A], ChildSaInstall), kinds(net.events[B], ChildSaInstall)
    assert len(ia) == len(ib) == 2
    x, y = ia[1], ib[1]
    assert x.name == "more" and y.name == "more"
    assert (x.key_out, x.integ_key_out) == (y.key_in, y.integ_key_in)
    assert x.integ == 12
    assert len(kinds(net.events[A], ChildSaUp)) == 2
    # a second CREATE_CHILD_SA from the original responder's side works too (it uses its own Message IDs)
    b_ike = kinds(net.events[B], IkeSaUp)[0].ike_id
    b.create_child(b_ike, "more", 2.0)
    net.pump(2.0)
    assert len(kinds(net.events[A], ChildSaInstall)) == 3


def test_delete_child_from_either_side():
    a, b, net = pair()
    a.initiate("gw", 0.0)
    net.pump(0.0)
    h = kinds(net.events[A], ChildSaUp)[0].handle
    a.delete_child(h, 1.0)
    net.pump(1.0)
    assert len(kinds(net.events[A], ChildSaDelete)) == 1 and len(kinds(net.events[B], ChildSaDelete)) == 1
    assert kinds(net.events[A], ChildSaDelete)[0].handle == h
    ike_b = kinds(net.events[B], IkeSaUp)[0].ike_id
    b.create_child(ike_b, "net", 2.0)
    net.pump(2.0)
    hb = kinds(net.events[B], ChildSaUp)[-1].handle
    b.delete_child(hb, 3.0)
    net.pump(3.0)
    assert len(kinds(net.events[A], ChildSaDelete)) == 2 and len(kinds(net.events[B], ChildSaDelete)) == 2
    assert not kinds(net.events[A], IkeSaDown)
    assert not any(e.replaced for e in kinds(net.events[A] + net.events[B], ChildSaDelete))   # closed, not replaced


@pytest.mark.parametrize("side", [A, B])
def test_delete_ike_from_either_side(side):
    a, b, net = pair()
    a.initiate("gw", 0.0)
    net.pump(0.0)
    eng = a if side == A else b
    eng.delete_ike(kinds(net.events[side], IkeSaUp)[0].ike_id, 1.0)
    net.pump(1.0)
    for ip in (A, B):
        ev = net.events[ip]
        assert len(kinds(ev, ChildSaDelete)) == 1
        down = kinds(ev, IkeSaDown)
        assert len(down) == 1 and down[0].established
        assert ev.index(kinds(ev, ChildSaDelete)[0]) < ev.index(down[0])
    assert a.ike_sas() == [] and b.ike_sas() == []


def test_empty_informational_is_answered():
    a, b, net = pair()
    a.initiate("gw", 0.0)
    net.pump(0.0)
    alive = []
    a.check_liveness(kinds(net.events[A], IkeSaUp)[0].ike_id, 1.0, on_alive=lambda sa, now: alive.append(now))
    net.pump(1.0)
    assert alive == [1.0]


def test_liveness_without_answer_tears_down():
    pol = RetransmitPolicy(timeout=0.2, base=2.0, tries=2)
    a, b, net = pair(retransmit=pol)
    a.initiate("gw", 0.0)
    net.pump(0.0)
    a.check_liveness(kinds(net.events[A], IkeSaUp)[0].ike_id, 1.0)
    a.datagrams_to_send(1.0)                 # lost, and so are the retransmissions
    now = 1.0
    while (t := a.get_timer()) is not None:
        now = t
        a.handle_timer(now)
        a.datagrams_to_send(now)
    ev = drain(a, now)
    assert kinds(ev, ChildSaDelete) and kinds(ev, IkeSaDown)
    assert abs(now - (1.0 + 0.2 + 0.4 + 0.8)) < 1e-9


def test_initial_contact_replaces_old_sa():
    a, b, net = pair()
    a.initiate("gw", 0.0)
    net.pump(0.0)
    old_b = kinds(net.events[B], IkeSaUp)[0].ike_id
    # the initiator "restarts": a fresh engine with the same config
    a2 = engine(conn(A, B, "a.example", "b.example", A_NET, B_NET))
    net.add(A, a2)
    a2.initiate("gw", 1.0)
    net.pump(1.0)
    down = [d for d in kinds(net.events[B], IkeSaDown) if d.ike_id == old_b]
    assert down and "INITIAL_CONTACT" in down[0].reason
    assert len(kinds(net.events[B], ChildSaDelete)) == 1


def test_half_open_limits_and_expiry():
    s = EngineSettings(max_half_open=5, max_half_open_per_ip=3, half_open_timeout=10.0)
    a, b, net = pair(settings_b=s, settings_a=EngineSettings(max_initiating_per_peer=0))   # a floods
    for _ in range(5):
        a.initiate("gw", 0.0)
    for d in a.datagrams_to_send(0.0):
        b.receive_datagram(d.data, (A, 500), 0.0, (B, 500))
    assert b.half_open_count() == 3 and b.stats["half_open_limit"] == 2
    b.handle_timer(10.0)
    assert b.half_open_count() == 0 and b.ike_sas() == []


def test_error_replies_are_rate_limited():
    s = EngineSettings(reply_rate=1.0, reply_burst=3.0)
    b = engine(conn(B, A, "b.example", "a.example", B_NET, A_NET, ike="aes128gcm16-prfsha256-ecp256"), settings=s)
    a = engine(conn(A, B, "a.example", "b.example", A_NET, B_NET, ike="aes128gcm16-prfsha256-x25519"),
               settings=EngineSettings(max_initiating_per_peer=0))        # a floods
    for _ in range(20):
        a.initiate("gw", 0.0)
    for d in a.datagrams_to_send(0.0):
        b.receive_datagram(d.data, (A, 500), 0.0, (B, 500))
    assert len(b.datagrams_to_send(0.0)) == 3          # NO_PROPOSAL_CHOSEN, at most the burst
    assert b.stats["replies_rate_limited"] == 17
    assert b.ike_sas() == []


def test_unknown_spi_and_bad_icv_are_dropped():
    a, b, net = pair()
    a.initiate("gw", 0.0)
    net.pump(0.0)
    a.check_liveness(kinds(net.events[A], IkeSaUp)[0].ike_id, 1.0)
    req = a.datagrams_to_send(1.0)[0].data
    bad = bytearray(req)
    bad[-1] ^= 1
    b.receive_datagram(bytes(bad), (A, 4500), 1.0, (B, 4500))
    assert b.stats["bad_icv"] == 1 and b.datagrams_to_send(1.0) == []
    other = bytearray(req)
    other[8:16] = b"\x99" * 8
    b.receive_datagram(bytes(other), (A, 4500), 1.0, (B, 4500))
    assert b.stats["unknown_spi"] == 1


def test_invalid_syntax_inside_protected_request_is_answered():
    a, b, net = pair()
    a.initiate("gw", 0.0)
    net.pump(0.0)
    sa = a.ike_sa(kinds(net.events[A], IkeSaUp)[0].ike_id)
    from host.ike.payloads import RawPayload
    msg = Message(sa.spi_i, sa.spi_r, ExchangeType.INFORMATIONAL, Flag.INITIATOR, sa.my_mid,
                  [RawPayload(PayloadType.NONCE, b"short")])
    b.receive_datagram(msg.encode(sa.cipher), (A, 4500), 1.0, (B, 4500))
    out = b.datagrams_to_send(1.0)
    assert len(out) == 1
    a.receive_datagram(out[0].data, (B, 4500), 1.0, (A, 4500))  # not outstanding at a: dropped
    assert a.stats["unexpected_response"] == 1
    from host.ike.message import open_sk
    hdr = parse_header(out[0].data)
    _, sk = parse_plain(hdr, out[0].data)
    inner = open_sk(out[0].data, sk, sa.cipher)
    assert inner[0].notify_type == Notify.INVALID_SYNTAX


def test_unauthenticated_garbage_does_not_advance_message_ids():
    """A message with our SPIs and the expected Message ID but a broken outer payload chain is not
    authentic: it is dropped without an answer and the real next request still works."""
    a, b, net = pair()
    a.initiate("gw", 0.0)
    net.pump(0.0)
    ike_id = kinds(net.events[A], IkeSaUp)[0].ike_id
    a.check_liveness(ike_id, 1.0)
    req = a.datagrams_to_send(1.0)[0].data
    bad = bytearray(req)
    bad[30:32] = b"\xff\xff"                     # the Encrypted payload's length field
    b.receive_datagram(bytes(bad), (A, 4500), 1.0, (B, 4500))
    assert b.datagrams_to_send(1.0) == []
    b.receive_datagram(req, (A, 4500), 1.0, (B, 4500))
    out = b.datagrams_to_send(1.0)
    assert len(out) == 1
    a.receive_datagram(out[0].data, (B, 4500), 1.0, (A, 4500))
    assert a.ike_sa(ike_id).outstanding is None and a.stats["bad_icv"] == 0


def test_forged_init_response_is_ignored_not_fatal():
    a, b, net = pair()
    a.initiate("gw", 0.0)
    first = a.datagrams_to_send(0.0)[0]
    hdr = parse_header(first.data)
    forged = Message(hdr.spi_i, b"\x42" * 8, ExchangeType.IKE_SA_INIT, Flag.RESPONSE, 0, []).encode()
    a.receive_datagram(forged, (B, 500), 0.0, (A, 500))
    assert a.stats["init_responses_ignored"] == 1 and len(a.ike_sas()) == 1
    b.receive_datagram(first.data, (A, 500), 0.0, (B, 500))
    net.pump(0.0)
    assert kinds(net.events[A], IkeSaUp)


def _first_notify(data):
    hdr = parse_header(data)
    payloads, _ = parse_plain(hdr, data)
    return payloads[0]


def test_unknown_critical_payload_in_ike_sa_init():
    a, b, net = pair()
    a.initiate("gw", 0.0)
    init = a.datagrams_to_send(0.0)[0].data
    hdr = parse_header(init)
    payloads, _ = parse_plain(hdr, init)
    from host.ike.payloads import RawPayload
    crit = RawPayload(250, b"surprise", critical=True)
    msg = Message(hdr.spi_i, hdr.spi_r, hdr.exchange, hdr.flags, 0, payloads + [crit]).encode()
    b.receive_datagram(msg, (A, 500), 0.0, (B, 500))
    out = b.datagrams_to_send(0.0)
    n = _first_notify(out[0].data)
    assert n.notify_type == Notify.UNSUPPORTED_CRITICAL_PAYLOAD and n.data == bytes((250,))
    assert b.ike_sas() == []
    # not critical: ignored, the SA comes up
    ok = Message(hdr.spi_i, hdr.spi_r, hdr.exchange, hdr.flags, 0,
                 payloads + [RawPayload(250, b"surprise")]).encode()
    b.receive_datagram(ok, (A, 500), 0.0, (B, 500))
    assert b.half_open_count() == 1


def test_invalid_syntax_answer_to_malformed_ike_sa_init():
    a, b, net = pair()
    a.initiate("gw", 0.0)
    init = bytearray(a.datagrams_to_send(0.0)[0].data)
    # the Nonce payload cut to 8 bytes (§3.9 needs 16): rebuild the message around it
    hdr = parse_header(bytes(init))
    payloads, _ = parse_plain(hdr, bytes(init))
    from host.ike.payloads import RawPayload
    bad = [RawPayload(PayloadType.NONCE, b"12345678") if p.ptype == PayloadType.NONCE else p for p in payloads]
    b.receive_datagram(Message(hdr.spi_i, hdr.spi_r, hdr.exchange, hdr.flags, 0, bad).encode(), (A, 500), 0.0, (B, 500))
    n = _first_notify(b.datagrams_to_send(0.0)[0].data)
    assert n.notify_type == Notify.INVALID_SYNTAX and b.ike_sas() == []
    # two SA payloads: also INVALID_SYNTAX
    twice = payloads[:1] + payloads
    b.receive_datagram(Message(hdr.spi_i, hdr.spi_r, hdr.exchange, hdr.flags, 0, twice).encode(),
                       (A, 500), 0.0, (B, 500))
    assert _first_notify(b.datagrams_to_send(0.0)[0].data).notify_type == Notify.INVALID_SYNTAX


def test_unknown_critical_payload_in_protected_request():
    a, b, net = pair()
    a.initiate("gw", 0.0)
    net.pump(0.0)
    sa = a.ike_sa(kinds(net.events[A], IkeSaUp)[0].ike_id)
    from host.ike.payloads import RawPayload
    from host.ike.message import open_sk
    msg = Message(sa.spi_i, sa.spi_r, ExchangeType.INFORMATIONAL, Flag.INITIATOR, sa.my_mid,
                  [RawPayload(251, b"x", critical=True)])
    b.receive_datagram(msg.encode(sa.cipher), (A, 4500), 1.0, (B, 4500))
    out = b.datagrams_to_send(1.0)[0].data
    _, sk = parse_plain(parse_header(out), out)
    inner = open_sk(out, sk, sa.cipher)
    assert inner[0].notify_type == Notify.UNSUPPORTED_CRITICAL_PAYLOAD and inner[0].data == bytes((251,))


def test_start_action_brings_up_marked_children():
    children = {"net": {"local_ts": [A_NET], "remote_ts": [B_NET], "esp_proposals": ["aes256gcm16"],
                        "start_action": "start"},
                "other": {"local_ts": ["198.51.100.9"], "remote_ts": ["203.0.113.9"], "esp_proposals": ["aes128gcm16"]},
                "udp": {"local_ts": ["198.51.100.5[udp]"], "remote_ts": ["203.0.113.5[udp]"],
                        "esp_proposals": ["aes128gcm16"], "start_action": "start"}}
    bchildren = {"all": {"local_ts": ["203.0.113.0/24"], "remote_ts": ["198.51.100.0/24"],
                         "esp_proposals": ["aes256gcm16", "aes128gcm16"]}}
    a, b, net = pair(a_conn=conn(A, B, "a.example", "b.example", A_NET, B_NET, children=children,
                                 extra={"start_action": "start"}),
                     b_conn=conn(B, A, "b.example", "a.example", B_NET, A_NET, children=bchildren))
    assert len(a.start(0.0)) == 1 and b.start(0.0) == []
    net.pump(0.0)
    names = [e.name for e in kinds(net.events[A], ChildSaUp)]
    assert names == ["net", "udp"]
    udp = kinds(net.events[A], ChildSaInstall)[1]
    assert [t.ip_proto for t in udp.remote_ts] == [17] and udp.encr_key_bits == 128


def test_drop_ike_sends_one_delete_and_reports_at_once():
    a, b, net = pair()
    a.initiate("gw", 0.0)
    net.pump(0.0)
    ike_id = kinds(net.events[A], IkeSaUp)[0].ike_id
    child = kinds(net.events[A], ChildSaUp)[0]
    assert a.child_by_spi_in(child.spi_in).handle == child.handle
    assert [sa.ike_id for sa in a.ike_sas_with_peer(B)] == [ike_id]
    a.drop_ike(ike_id, 1.0, "board lost")
    ev = drain(a, 1.0)
    assert [type(e).__name__ for e in ev] == ["ChildSaDelete", "IkeSaDown"]
    assert ev[1].reason == "board lost" and a.ike_sas() == [] and a.child_by_spi_in(child.spi_in) is None
    out = a.datagrams_to_send(1.0)
    assert len(out) == 1
    b.receive_datagram(out[0].data, (A, 4500), 1.0, (B, 4500))      # the peer honours it
    assert kinds(drain(b, 1.0), IkeSaDown)[0].reason == "deleted by peer"
    assert a.get_timer() is None                                       # nothing retransmits


def test_ipv6_peers_and_selectors():
    a6, b6 = "2001:db8::1", "2001:db8::2"
    a = engine(conn(a6, b6, "a.example", "b.example", "2001:db8:a::/48", "2001:db8:b::/48"))
    b = engine(conn(b6, a6, "b.example", "a.example", "2001:db8:b::/48", "2001:db8:a::/48"))
    net = Network()
    net.add(a6, a)
    net.add(b6, b)
    a.initiate("gw", 0.0)
    net.pump(0.0)
    x = kinds(net.events[a6], ChildSaInstall)[0]
    assert x.remote_addr == b6 and x.local_ts[0].ts_type == 8 and len(x.local_ts[0].start) == 16
    assert kinds(net.events[b6], ChildSaUp)


def _crash(*_args):
    raise ZeroDivisionError("a bug inside a handler")


@pytest.mark.parametrize("strict", [True, False])
def test_a_crash_inside_a_handler_fails_the_test(strict):
    """In the engine tests (strict, the default of pair()) a bug in a handler raises out of
    receive_datagram, so no test that expects "ignored" can pass over it; the daemon's engine
    (not strict) counts it and carries on."""
    a, b, net = pair(strict=strict)
    a.initiate("gw", 0.0)
    net.pump(0.0)
    sa = a.ike_sa(kinds(net.events[A], IkeSaUp)[0].ike_id)
    b.ctx.notify_hooks[Notify.INVALID_SPI] = _crash
    msg = Message(sa.spi_i, sa.spi_r, ExchangeType.INFORMATIONAL, Flag.INITIATOR, sa.my_mid,
                  [NotifyPayload(Notify.INVALID_SPI, (0x1234).to_bytes(4, "big"), protocol=3)])
    if strict:
        with pytest.raises(ZeroDivisionError, match="inside a handler"):
            b.receive_datagram(msg.encode(sa.cipher), (A, 4500), 1.0, (B, 4500))
    else:
        b.receive_datagram(msg.encode(sa.cipher), (A, 4500), 1.0, (B, 4500))
        assert b.stats["internal_errors"] == 1
    assert pair()[0].strict and engine(conn(A, B, "a", "b", A_NET, B_NET)).strict


def test_nat_keepalives_only_from_the_side_behind_a_nat():
    """RFC 3948 §2.3/§4: the side that is (or, with encap forced, acts as if it were) behind a
    NAT sends a 0xFF byte from its NAT-T port every nat_keepalive seconds; the other side none."""
    a, b, net = pair(b_conn=conn(B, A, "b.example", "a.example", B_NET, A_NET, extra={"encap": False}),
                     settings_a=EngineSettings(nat_keepalive=20.0))
    a.initiate("gw", 0.0)
    net.pump(0.0)
    sa_a, sa_b = a.ike_sas()[0], b.ike_sas()[0]
    assert sa_a.nat_local and not sa_b.nat_local and sa_b.nat_remote
    for t in range(1, 62):
        net.run_timers(float(t))
        net.pump(float(t))
    assert [(t, ip) for t, ip, _ in net.keepalives] == [(20.0, A), (40.0, A), (60.0, A)]
    d = net.keepalives[0][2]
    assert (d.data, d.keepalive, d.local, d.remote) == (b"\xff", True, (A, 4500), (B, 4500))
    assert a.stats["nat_keepalives"] == 3 and b.stats["nat_keepalives"] == 0
    a.delete_ike(sa_a.ike_id, 62.0)
    net.pump(62.0)
    net.run_timers(100.0)
    assert len(net.keepalives) == 3                     # none once the IKE SA is gone


def test_nat_mapping_change_moves_the_ike_sa_and_its_esp():
    """§2.23: an authentic request from a new address/port of a peer behind a NAT moves the IKE
    SA there (answer included) and tells the driver (IkeSaMoved) to move the Child SAs' ESP."""
    a, b, net = pair()
    a.initiate("gw", 0.0)
    net.pump(0.0)
    sa_b = b.ike_sas()[0]
    assert sa_b.remote == (A, 4500)
    a.check_liveness(a.ike_sas()[0].ike_id, 1.0)
    req = a.datagrams_to_send(1.0)[0]
    b.receive_datagram(req.data, ("198.51.100.77", 31337), 1.0, (B, 4500))     # the NAT remapped a
    ev = kinds(drain(b, 1.0), IkeSaMoved)
    assert ev == [IkeSaMoved(sa_b.ike_id, (B, 4500), ("198.51.100.77", 31337))]
    assert b.datagrams_to_send(1.0)[0].remote == ("198.51.100.77", 31337)
    assert sa_b.remote == ("198.51.100.77", 31337) and b.ike_sas_with_peer("198.51.100.77") == [sa_b]
    # a forged copy from elsewhere is not authentic and moves nothing
    bad = bytearray(req.data)
    bad[-1] ^= 1
    b.receive_datagram(bytes(bad), ("192.0.2.99", 4500), 2.0, (B, 4500))
    assert not kinds(drain(b, 2.0), IkeSaMoved) and sa_b.remote == ("198.51.100.77", 31337)
