"""Post-quantum hybrid key exchange between two of our engines (RFC 9242 IKE_INTERMEDIATE, RFC 9370
additional key exchanges, ML-KEM-768/1024 per draft-ietf-ipsecme-ikev2-mlkem), both roles, rekeys
included; known answers of RFC 9370's key derivation; the IntAuth of IKE_AUTH recomputed from the
datagrams on the wire with the standard library's HMAC (not the engine's), by RFC 9242 §3.3.2's
rule as strongSwan applies it; and the refusals and failures around them."""
import hashlib
import hmac
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from host.ike import crypto as ikecrypto
from host.ike import followup_ke, ike_intermediate
from host.ike.config import EngineSettings
from host.ike.constants import DhGroup, Encr, ExchangeType, Notify, PayloadType, Prf, ProtocolId
from host.ike.events import ChildSaInstall, ChildSaUp, IkeSaDown, IkeSaRekeyed, IkeSaUp
from host.ike.keys import child_keymat, derive_ike_keys, skeyseed, skeyseed_intermediate, skeyseed_rekey
from host.ike.message import parse_header
from host.ike.payloads import decode_chain
from host.ike.proposals import (
    DEFAULT_PROPOSALS, ProposalError, describe, parse_proposal, parse_proposals,
)
from tests.test_engine import A, B, conn, kinds, pair
from tests.test_lifecycle import advance, assert_pair, keys_agree, only_child, up

HYBRID = "aes256gcm16-prfsha384-x25519-ke1_mlkem768"
H = bytes.fromhex
WHOLE = dict(settings_a=EngineSettings(fragment_size=1500), settings_b=EngineSettings(fragment_size=1500))


# ---------------------------------------------------------------- proposal syntax

def test_strongswan_keywords_parse_and_print_back():
    for text in (HYBRID, "aes256gcm16-prfsha384-x25519-ke1_mlkem768-ke2_mlkem1024", "chacha20poly1305-prfsha256-x448",
                 "aes256-sha384-prfsha384-ecp384", "aes256-sha512-prfsha512-ecp521", "aes128-sha256-prfsha256-modp3072",
                 "aes256-sha512-prfsha512-modp4096", "aes128-sha1-prfsha1-modp2048"):
        assert describe(parse_proposal(text)) == text
    s = parse_proposal("aes256gcm16-x25519-ke1_mlkem768-ke1_none-ke3_mlkem1024", ProtocolId.ESP)
    assert s.ake == ((6, (DhGroup.MLKEM_768, 0)), (8, (DhGroup.MLKEM_1024,)))
    assert parse_proposal("aes128gcm16-ecp256-none", ProtocolId.ESP).dh == (DhGroup.ECP_256, 0)
    assert parse_proposal("aes128gcm16-none", ProtocolId.ESP).dh == ()
    assert parse_proposal("aes-sha-curve25519").encr == ((Encr.AES_CBC, 128),)
    # ChaCha20-Poly1305 has no Key Length attribute on the wire (RFC 7634 §4)
    (t,) = [t for t in parse_proposal("chacha20poly1305", ProtocolId.ESP).transforms() if t.ttype == 1]
    assert (t.tid, t.key_len) == (Encr.CHACHA20_POLY1305, None)


@pytest.mark.parametrize("text,why", [
    ("aes256gcm16-prfsha384-ke1_mlkem768", "need a first key exchange method"),
    ("aes256gcm16-prfsha384-x25519-ke8_mlkem768", "unknown algorithm 'ke8_mlkem768'"),
    ("aes256gcm16-prfsha384-x25519-ke1_kyber3", "unknown algorithm"),
    ("aes256gcm16-prfsha384-none", "needs a key exchange"),
    ("aes256gcm16-prfsha384-x25519-default", "unknown algorithm 'default'"),
])
def test_bad_proposals_name_the_problem(text, why):
    with pytest.raises(ProposalError, match=why):
        parse_proposal(text)


def test_default_expands_as_strongswan_without_sha1():
    ike = parse_proposals(["default"])
    assert [s.aead for s in ike] == [False, True]       # IKE: non-AEAD first (vici_config.c's order)
    assert DhGroup.CURVE448 in ike[0].dh and DhGroup.MODP_4096 in ike[1].dh
    assert all(p != Prf.HMAC_SHA1 for s in ike for p in s.prf) and all(i != 2 for s in ike for i in s.integ)
    assert (Encr.CHACHA20_POLY1305, 256) in ike[1].encr
    esp = parse_proposals(["default", "aes128-sha256"], ProtocolId.ESP)
    assert [s.aead for s in esp] == [True, False, False]   # ESP: AEAD first
    assert [describe(s) for s in esp[:2]] == list(DEFAULT_PROPOSALS[ProtocolId.ESP])
    with pytest.raises(ProposalError):
        parse_proposal("default")


def test_default_proposals_negotiate_between_two_engines():
    a, b, net = pair(ike="default", esp="default")
    a.initiate("gw", 0.0)
    net.pump(0.0)
    ups = kinds(net.events[A], IkeSaUp)
    assert ups and ups[0].proposal == "aes128-sha256-prfsha256-ecp256"
    assert kinds(net.events[A], ChildSaUp)


# ---------------------------------------------------------------- RFC 9370 key derivation, known answers

NI, NR = H("00112233445566778899aabbccddeeff" * 2), H("ffeeddccbbaa99887766554433221100" * 2)
SPII, SPIR = H("0102030405060708"), H("1112131415161718")
SK0, SK1, SK2 = H("a0" * 32), H("b1" * 32), H("c2" * 32)


def _prf(key, data):
    return hmac.new(key, data, hashlib.sha384).digest()


def _prf_plus(key, seed, n):
    out, t, i = b"", b"", 1
    while len(out) < n:
        t = _prf(key, t + seed + bytes((i,)))
        out += t
        i += 1
    return out[:n]


def test_intermediate_key_update_known_answer():
    """RFC 9370 §2.2.2: SKEYSEED(n) = prf(SK_d(n-1), SK(n) | Ni | Nr); keys as §2.14. The expected
    values come from the standard library's HMAC-SHA-384 (and the first one is pinned)."""
    prf = ikecrypto.prf_alg(Prf.HMAC_SHA2_384)
    sizes = (48, 0, 0, 36, 36, 48, 48)                  # AES-256-GCM (key + salt), PRF-HMAC-SHA-384
    seed0 = _prf(NI + NR, SK0)
    km0 = _prf_plus(seed0, NI + NR + SPII + SPIR, sum(sizes))
    sk_d0 = km0[:48]
    seed1 = _prf(sk_d0, SK1 + NI + NR)
    km1 = _prf_plus(seed1, NI + NR + SPII + SPIR, sum(sizes))
    assert skeyseed(prf, NI, NR, SK0) == seed0
    k0 = derive_ike_keys(prf, seed0, NI, NR, SPII, SPIR, Encr.AES_GCM_16, 256, 0)
    assert skeyseed_intermediate(prf, k0.sk_d, SK1, NI, NR) == seed1
    k1 = derive_ike_keys(prf, seed1, NI, NR, SPII, SPIR, Encr.AES_GCM_16, 256, 0)
    assert k1.sk_d + k1.sk_ei + k1.sk_er + k1.sk_pi + k1.sk_pr == km1
    assert seed1.hex()[:32] == "b68e48b054170436c588780b3d507b86"


def test_rekey_and_child_keymat_known_answer():
    """RFC 9370 §2.2.4: SKEYSEED = prf(SK_d, SK(0) | Ni | Nr | SK(1) | ... | SK(n)) for an IKE
    SA rekey; KEYMAT = prf+(SK_d, SK(0) | Ni | Nr | SK(1) | ... | SK(n)) for a Child SA."""
    prf = ikecrypto.prf_alg(Prf.HMAC_SHA2_384)
    sk_d = H("5d" * 48)
    assert skeyseed_rekey(prf, sk_d, SK0, NI, NR, SK1 + SK2) == _prf(sk_d, SK0 + NI + NR + SK1 + SK2)
    k = child_keymat(prf, sk_d, NI, NR, Encr.AES_GCM_16, 256, 0, SK0, SK1 + SK2)
    want = _prf_plus(sk_d, SK0 + NI + NR + SK1 + SK2, 72)
    assert k.encr_i + k.salt_i + k.encr_r + k.salt_r == want


# ---------------------------------------------------------------- two engines, the wire checked

class Recorder:
    """Every datagram the Network moves, and every key exchange secret the engines compute."""

    def __init__(self, monkeypatch):
        self.datagrams = []
        self.secrets = []
        for g in ikecrypto.DH_GROUPS.values():
            self._wrap(monkeypatch, g)

    def _wrap(self, monkeypatch, g):
        shared, respond = g.shared, g.respond

        def shared_(state, peer, _f=shared):
            out = _f(state, peer)
            self.secrets.append((g.group, out))
            return out

        def respond_(peer, _f=respond):
            pub, out = _f(peer)
            if g.group in ikecrypto.KEMS:       # a DH group's respond() calls shared(): seen there
                self.secrets.append((g.group, out))
            return pub, out
        monkeypatch.setattr(g, "shared", shared_)
        monkeypatch.setattr(g, "respond", respond_)

    def loss(self, d):
        self.datagrams.append(d.data)
        return False

    def of(self, exchange, response):
        out = []
        for d in self.datagrams:
            h = parse_header(d)
            if h.exchange == exchange and bool(h.flags & 0x20) == response:
                out.append((h, d))
        return out


def _open(key: bytes, data: bytes):
    """Decrypt an AES-GCM-16 Encrypted payload (RFC 5282) with SK_e = key | salt: (first inner type, plaintext)."""
    nxt = data[28]
    iv = data[32:40]
    plain = AESGCM(key[:-4]).decrypt(key[-4:] + iv, data[40:], data[:32])
    return nxt, plain[:len(plain) - 1 - plain[-1]]


def _int_auth_part(data: bytes, first: int, inner: bytes) -> bytes:
    """IntAuth_A | IntAuth_P as strongSwan computes it (message.c get_plain): lengths without IV,
    padding and ICV."""
    hdr = bytearray(data[:28])
    hdr[16] = 46
    struct.pack_into("!I", hdr, 24, 28 + 4 + len(inner))
    return bytes(hdr) + struct.pack("!BBH", first, 0, 4 + len(inner)) + inner


def test_hybrid_handshake_keys_and_intauth_recomputed_from_the_wire(monkeypatch):
    rec = Recorder(monkeypatch)
    a, b, net = pair(ike=HYBRID, esp="aes256gcm16", **WHOLE)      # unfragmented: one datagram a message
    net.loss = rec.loss
    a.initiate("gw", 0.0)
    net.pump(0.0)
    (ua,), (ub,) = kinds(net.events[A], IkeSaUp), kinds(net.events[B], IkeSaUp)
    assert ua.proposal == ub.proposal == HYBRID
    assert a.stats["intermediate_exchanges"] == b.stats["intermediate_exchanges"] == 1
    sa_a, sa_b = a.ike_sas()[0], b.ike_sas()[0]
    # the exchanges in order: IKE_SA_INIT (mid 0), IKE_INTERMEDIATE (mid 1), IKE_AUTH (mid 2)
    (init_h, init_req), = rec.of(ExchangeType.IKE_SA_INIT, False)
    (_, init_resp), = rec.of(ExchangeType.IKE_SA_INIT, True)
    (ih, ireq), = rec.of(ExchangeType.IKE_INTERMEDIATE, False)
    (_, iresp), = rec.of(ExchangeType.IKE_INTERMEDIATE, True)
    (ah, areq), = rec.of(ExchangeType.IKE_AUTH, False)
    assert (ih.mid, ah.mid) == (1, 2)
    for d in (init_req, init_resp):
        assert struct.pack("!H", Notify.INTERMEDIATE_EXCHANGE_SUPPORTED) in d
    # the secrets: X25519 at both ends, then ML-KEM-768 at both ends
    x = [s for g, s in rec.secrets if g == DhGroup.CURVE25519]
    k = [s for g, s in rec.secrets if g == DhGroup.MLKEM_768]
    assert len(x) == len(k) == 2 and x[0] == x[1] and k[0] == k[1] and len(k[0]) == 32
    ni, nr = sa_a.ni, sa_a.nr
    spi = sa_a.spi_i + sa_a.spi_r
    sizes = (48, 0, 0, 36, 36, 48, 48)
    split = lambda km: [km[sum(sizes[:i]):sum(sizes[:i + 1])] for i in range(7)]     # noqa: E731
    k0 = split(_prf_plus(_prf(ni + nr, x[0]), ni + nr + spi, sum(sizes)))
    k1 = split(_prf_plus(_prf(k0[0], k[0] + ni + nr), ni + nr + spi, sum(sizes)))
    assert sa_a.keys.sk_d == sa_b.keys.sk_d == k1[0] and sa_a.keys.sk_ei == k1[3] and sa_b.keys.sk_pr == k1[6]
    # the IKE_INTERMEDIATE request is protected with the keys before it (SK_ei(0)), IKE_AUTH after it
    f_req, p_req = _open(k0[3], ireq)
    f_resp, p_resp = _open(k0[4], iresp)
    inner, _ = decode_chain(f_req, p_req, 0, len(p_req))
    assert [(p.ptype, p.group, len(p.data)) for p in inner] == [(PayloadType.KE, DhGroup.MLKEM_768, 1184)]
    int_i = _prf(k0[5], _int_auth_part(ireq, f_req, p_req))
    int_r = _prf(k0[6], _int_auth_part(iresp, f_resp, p_resp))
    assert sa_a.int_auth_i == sa_b.int_auth_i == b""       # forgotten once the IKE SA is up
    # IKE_AUTH's PSK AUTH covers them: prf(prf(PSK, pad), RealMsg1 | Nr | prf(SK_pi, IDi') | IntAuth)
    # (the responder verified the same value, or the IKE SA would not be up)
    f_auth, p_auth = _open(k1[3], areq)
    payloads, _ = decode_chain(f_auth, p_auth, 0, len(p_auth))
    idi = next(p for p in payloads if p.ptype == PayloadType.IDi)
    auth = next(p for p in payloads if p.ptype == PayloadType.AUTH)
    octets = init_req + nr + _prf(k1[5], idi.body()) + int_i + int_r + struct.pack("!I", 2)
    assert auth.data == _prf(_prf(b"test-psk-0123456789abcdef", b"Key Pad for IKEv2"), octets)
    # and the Child SA keys come from the last SK_d
    ca = kinds(net.events[A], ChildSaInstall)[0]
    km = _prf_plus(k1[0], ni + nr, 72)
    assert ca.key_out + ca.salt_out == km[:36] and ca.key_in + ca.salt_in == km[36:]


def test_two_additional_exchanges_and_mlkem1024_fragmented():
    """ke1_mlkem768-ke2_mlkem1024: two IKE_INTERMEDIATE exchanges (Message IDs 1 and 2, IKE_AUTH 3);
    an ML-KEM-1024 key (1568 bytes) does not fit 1280 bytes: RFC 7383 fragments carry it."""
    ike = "aes256gcm16-prfsha384-x25519-ke1_mlkem768-ke2_mlkem1024"
    a, b, net = pair(ike=ike)
    a.initiate("gw", 0.0)
    net.pump(0.0)
    assert kinds(net.events[A], IkeSaUp)[0].proposal == ike
    assert a.stats["intermediate_exchanges"] == b.stats["intermediate_exchanges"] == 2
    assert a.stats["fragmented_messages_sent"] >= 1 and b.stats["fragmented_messages_sent"] >= 1
    assert a.ike_sas()[0].my_mid == 4 and kinds(net.events[B], ChildSaUp)


def test_optional_additional_exchange_and_mismatch():
    # ours offers ML-KEM as optional (ke1_none); a classical peer: no IKE_INTERMEDIATE
    a, b, net = pair(a_conn=conn(A, B, "a.example", "b.example", "198.51.100.0/24", "203.0.113.0/24",
                                 ike=HYBRID + "-ke1_none"),
                     b_conn=conn(B, A, "b.example", "a.example", "203.0.113.0/24", "198.51.100.0/24",
                                 ike="aes256gcm16-prfsha384-x25519"))
    a.initiate("gw", 0.0)
    net.pump(0.0)
    assert kinds(net.events[A], IkeSaUp)[0].proposal == "aes256gcm16-prfsha384-x25519"
    assert a.stats["intermediate_exchanges"] == 0
    # ML-KEM-768 against ML-KEM-1024 required: no proposal
    a, b, net = pair(a_conn=conn(A, B, "a.example", "b.example", "198.51.100.0/24", "203.0.113.0/24", ike=HYBRID),
                     b_conn=conn(B, A, "b.example", "a.example", "203.0.113.0/24", "198.51.100.0/24",
                                 ike="aes256gcm16-prfsha384-x25519-ke1_mlkem1024"))
    a.initiate("gw", 0.0)
    net.pump(0.0)
    assert not kinds(net.events[A], IkeSaUp) and "NO_PROPOSAL_CHOSEN" in kinds(net.events[A], IkeSaDown)[0].reason


def test_responder_refuses_additional_exchanges_without_intermediate_support(monkeypatch):
    """RFC 9370 §2.2.1: an initiator proposing them must send INTERMEDIATE_EXCHANGE_SUPPORTED."""
    monkeypatch.setattr(ike_intermediate, "init_request_payloads", lambda conn: [])
    a, b, net = pair(ike=HYBRID)
    a.initiate("gw", 0.0)
    net.pump(0.0)
    assert not kinds(net.events[B], IkeSaUp) and b.stats["error_replies"] == 1
    assert "NO_PROPOSAL_CHOSEN" in kinds(net.events[A], IkeSaDown)[0].reason


def test_lost_intermediate_response_is_resent_and_keys_still_agree():
    a, b, net = pair(ike=HYBRID)
    dropped = []

    def loss(d):
        h = parse_header(d.data)
        if h.exchange == ExchangeType.IKE_INTERMEDIATE and h.flags & 0x20 and not dropped:
            dropped.append(d)
            return True
        return False
    net.loss = loss
    a.initiate("gw", 0.0)
    net.pump(0.0)
    assert dropped and not kinds(net.events[A], IkeSaUp)
    advance(net, 0.0, 10.0)                 # the retransmission gets the cached answer
    assert kinds(net.events[A], IkeSaUp) and b.stats["retransmits_answered"] == 1
    assert a.ike_sas()[0].keys.sk_d == b.ike_sas()[0].keys.sk_d


def test_wrong_method_in_intermediate_is_refused(monkeypatch):
    """The responder expects the method IKE_SA_INIT agreed; another one ends the attempt at both
    ends (NO_PROPOSAL_CHOSEN), nothing established."""
    orig = ike_intermediate.IntermediateTask.build

    def build(self, sa, now):
        sa.ake_pending = [(6, DhGroup.MLKEM_1024)]
        return orig(self, sa, now)
    monkeypatch.setattr(ike_intermediate.IntermediateTask, "build", build)
    a, b, net = pair(ike=HYBRID)
    a.strict = b.strict = False
    a.initiate("gw", 0.0)
    net.pump(0.0)
    assert not kinds(net.events[A], IkeSaUp) and not kinds(net.events[B], IkeSaUp)
    assert "NO_PROPOSAL_CHOSEN" in kinds(net.events[A], IkeSaDown)[0].reason
    assert not b.ike_sas() and not a.ike_sas()


# ---------------------------------------------------------------- rekeys with IKE_FOLLOWUP_KE

@pytest.mark.parametrize("who", ["initiator", "responder"])
def test_hybrid_ike_rekey_with_followup_both_roles(who, monkeypatch):
    rec = Recorder(monkeypatch)
    a, b, net = pair(ike=HYBRID, esp="aes256gcm16-x25519-ke1_mlkem768")
    sa_a, sa_b = up(a, b, net)
    ca, cb = only_child(sa_a), only_child(sa_b)
    side, sa = (a, sa_a) if who == "initiator" else (b, sa_b)
    rec.secrets.clear()
    net.loss = rec.loss
    old_sk_d = sa_a.keys.sk_d           # a replaced IKE SA drops its keys when it dies
    assert side.rekey_ike(sa.ike_id, 3.0)
    net.pump(3.0)
    (na,), (nb,) = a.ike_sas(), b.ike_sas()
    assert na is not sa_a and nb is not sa_b and only_child(na) is ca and only_child(nb) is cb
    assert a.stats["followup_exchanges"] == b.stats["followup_exchanges"] == 1
    assert len({h.mid for h, _ in rec.of(ExchangeType.IKE_FOLLOWUP_KE, False)}) == 1
    # SKEYSEED = prf(SK_d old, SK(0) | Ni | Nr | SK(1)), with the fresh nonces of the rekey
    x = [s for g, s in rec.secrets if g == DhGroup.CURVE25519]
    k = [s for g, s in rec.secrets if g == DhGroup.MLKEM_768]
    assert len(x) == len(k) == 2 and x[0] == x[1] and k[0] == k[1]
    seed = _prf(old_sk_d, x[0] + na.ni + na.nr + k[0])
    km = _prf_plus(seed, na.ni + na.nr + na.spi_i + na.spi_r, 48)
    assert na.keys.sk_d == nb.keys.sk_d == km
    for ip, o, n in ((A, sa_a, na), (B, sa_b, nb)):
        assert [(e.old_ike_id, e.new_ike_id) for e in kinds(net.events[ip], IkeSaRekeyed)] == [(o.ike_id, n.ike_id)]
    # the new IKE SA rekeys a Child SA with PFS and ML-KEM in turn, and a new Child SA is made
    n0 = len(net.events[A])
    side2 = b if who == "initiator" else a
    assert side2.rekey_child((cb if side2 is b else ca).handle, 5.0)
    net.pump(5.0)
    new_a, new_b = assert_pair(na, nb)
    ia = kinds(net.events[A][n0:], ChildSaInstall)[0]
    ib = kinds(net.events[B], ChildSaInstall)[-1]
    assert keys_agree(ia, ib) and ia.rekey_of == ca.handle
    assert a.stats["followup_exchanges"] == 2
    a.create_child(na.ike_id, "net", 6.0)
    net.pump(6.0)
    assert len(na.children) == len(nb.children) == 2 and a.stats["followup_exchanges"] == 3


def test_child_keymat_with_followup_from_the_wire(monkeypatch):
    rec = Recorder(monkeypatch)
    a, b, net = pair(ike="aes256gcm16-prfsha384-x25519", esp="aes256gcm16-ecp256-ke1_mlkem768")
    sa_a, sa_b = up(a, b, net)
    rec.secrets.clear()
    net.loss = rec.loss
    n0 = len(net.events[A])
    a.create_child(sa_a.ike_id, "net", 1.0)
    net.pump(1.0)
    ia = kinds(net.events[A][n0:], ChildSaInstall)[0]
    e = [s for g, s in rec.secrets if g == DhGroup.ECP_256]
    k = [s for g, s in rec.secrets if g == DhGroup.MLKEM_768]
    assert len(e) == len(k) == 2
    child = next(c for c in sa_a.children.values() if c.handle == ia.handle)
    assert child.chosen.ake == ((6, DhGroup.MLKEM_768),)
    # KEYMAT = prf+(SK_d, SK(0) | Ni | Nr | SK(1)); the initiator's nonces are in the request
    (_, req), = [(h, d) for h, d in rec.of(ExchangeType.CREATE_CHILD_SA, False)]
    (_, resp), = [(h, d) for h, d in rec.of(ExchangeType.CREATE_CHILD_SA, True)]
    ni = _nonce(sa_a.keys.sk_ei, req)
    nr = _nonce(sa_a.keys.sk_er, resp)
    km = _prf_plus(sa_a.keys.sk_d, e[0] + ni + nr + k[0], 72)
    assert ia.key_out + ia.salt_out == km[:36] and ia.key_in + ia.salt_in == km[36:]


def _nonce(key, data):
    first, plain = _open(key, data)
    payloads, _ = decode_chain(first, plain, 0, len(plain))
    return next(p.data for p in payloads if p.ptype == PayloadType.NONCE)


def test_followup_with_an_unknown_link_gets_state_not_found_and_the_rekey_is_retried(monkeypatch):
    a, b, net = pair(ike=HYBRID)
    sa_a, sa_b = up(a, b, net)
    monkeypatch.setattr(followup_ke, "link_notify",
                        lambda link: followup_ke.NotifyPayload(Notify.ADDITIONAL_KEY_EXCHANGE, b"bogus-link"))
    a.rekey_ike(sa_a.ike_id, 3.0)
    net.pump(3.0)
    assert b.stats["followup_state_not_found"] == 1 and a.stats["ike_rekeys_failed"] == 1
    assert a.ike_sas() == [sa_a] and b.ike_sas() == [sa_b]
    monkeypatch.undo()
    advance(net, 3.0, 40.0)             # the responder gives its half up; we retry later (§2.25)
    assert b.stats["followup_states_dropped"] >= 1 and not sa_b.followup_waiting
    (na,), (nb,) = a.ike_sas(), b.ike_sas()
    assert na is not sa_a and na.keys.sk_d == nb.keys.sk_d


def test_ike_auth_before_the_additional_exchange_is_refused(monkeypatch):
    monkeypatch.setattr(ike_intermediate, "start", lambda sa, chosen, now: None)
    a, b, net = pair(ike=HYBRID)
    a.strict = b.strict = False
    a.initiate("gw", 0.0)
    net.pump(0.0)
    assert not kinds(net.events[B], IkeSaUp) and not b.ike_sas()
    assert not kinds(net.events[A], IkeSaUp)


def test_an_intermediate_exchange_without_key_exchange_is_answered_and_authenticated(monkeypatch):
    """RFC 9242: IKE_INTERMEDIATE may carry other extensions' payloads; with nothing of ours in it
    the responder answers it empty, and both ends fold it into IntAuth (the AUTH still verifies)."""
    def build(self, sa, now):                   # an empty request
        ike_intermediate._chain(sa, True, 0x08, sa.my_mid, [])
        return []

    def on_response(self, sa, msg, raw, now):
        ike_intermediate._chain(sa, False, msg.flags, msg.mid, msg.payloads)
        return ike_intermediate.Outcome.DONE

    monkeypatch.setattr(ike_intermediate.IntermediateTask, "build", build)
    monkeypatch.setattr(ike_intermediate.IntermediateTask, "on_response", on_response)
    monkeypatch.setattr(ike_intermediate, "start",
                        lambda sa, chosen, now: sa.add_task(ike_intermediate.IntermediateTask(), now, first=True))
    a, b, net = pair()
    a.initiate("gw", 0.0)
    net.pump(0.0)
    assert kinds(net.events[A], IkeSaUp) and kinds(net.events[B], IkeSaUp)
    assert a.ike_sas()[0].my_mid == 3 and b.stats["intermediate_exchanges"] == 0


@pytest.mark.parametrize("esp", ["aes256gcm16-mlkem768", "aes256gcm16-mlkem1024-ke1_x448"])
def test_mlkem_as_the_first_key_exchange_of_a_child_sa(esp):
    """A KEM as the PFS method of CREATE_CHILD_SA: the responder encapsulates (not a DH answer)."""
    a, b, net = pair(ike="aes256gcm16-prfsha384-mlkem768", esp=esp)
    sa_a, sa_b = up(a, b, net)
    assert kinds(net.events[A], IkeSaUp)[0].proposal == "aes256gcm16-prfsha384-mlkem768"
    n0 = len(net.events[A])
    a.create_child(sa_a.ike_id, "net", 1.0)
    net.pump(1.0)
    ia, ib = kinds(net.events[A][n0:], ChildSaInstall)[0], kinds(net.events[B], ChildSaInstall)[-1]
    assert keys_agree(ia, ib) and len(sa_a.children) == 2
    assert b.rekey_child(ib.handle, 2.0)
    net.pump(2.0)
    assert len(sa_a.children) == len(sa_b.children) == 2


# ---------------------------------------------------------------- selection, as a property

_WORDS = ["aes128gcm16", "aes256gcm16", "chacha20poly1305", "aes256-sha384", "aes128-sha256"]
_KE = ["x25519", "x448", "ecp384", "modp3072", "mlkem768"]
_AKE = ["", "-ke1_mlkem768", "-ke1_mlkem1024", "-ke1_mlkem768-ke1_none", "-ke1_mlkem768-ke2_mlkem1024",
        "-ke2_mlkem768"]


def _ike(enc, kes, ake):
    prf = "" if "-sha" in enc else "-prfsha384"
    return enc + prf + "-" + "-".join(kes) + ake


@settings(max_examples=150, deadline=None)
@given(ours=st.tuples(st.sampled_from(_WORDS), st.lists(st.sampled_from(_KE), min_size=1, max_size=3, unique=True),
                      st.sampled_from(_AKE)),
       theirs=st.tuples(st.sampled_from(_WORDS), st.lists(st.sampled_from(_KE), min_size=1, max_size=3, unique=True),
                        st.sampled_from(_AKE)))
def test_the_responders_choice_is_one_the_initiator_accepts(ours, theirs):
    """RFC 7296 §3.3.6 with RFC 9370's types: whatever the responder picks from the initiator's
    offer is accepted by the initiator as one of its own, the same choice, and honours every
    additional key exchange the responder requires."""
    from host.ike.proposals import accept_response, select
    offer = parse_proposal(_ike(*theirs))
    mine = parse_proposal(_ike(*ours))
    sent = [offer.to_proposal(1, bytes(8))]
    chosen = select(sent, [mine], ProtocolId.IKE)
    if chosen is None:
        return
    back = accept_response(chosen.to_proposal(bytes(8)), sent, ProtocolId.IKE)
    assert back is not None and back == chosen
    for ttype, methods in mine.ake:
        assert dict(chosen.ake).get(ttype, 0) in methods
    assert chosen.dh in offer.dh and chosen.dh in mine.dh


def test_two_followups_in_an_ike_rekey_and_a_child_rekey():
    """Two additional key exchanges: the first IKE_FOLLOWUP_KE answer links to the second."""
    ike = "aes256gcm16-prfsha384-x25519-ke1_mlkem768-ke2_x448"
    a, b, net = pair(ike=ike, esp="aes256gcm16-x25519-ke1_mlkem768-ke2_ecp256")
    sa_a, sa_b = up(a, b, net)
    assert b.rekey_ike(sa_b.ike_id, 1.0)
    net.pump(1.0)
    (na,), (nb,) = a.ike_sas(), b.ike_sas()
    assert na is not sa_a and na.keys.sk_d == nb.keys.sk_d and na.chosen.describe() == ike
    assert a.stats["followup_exchanges"] == b.stats["followup_exchanges"] == 2
    ca = only_child(na)
    assert a.rekey_child(ca.handle, 2.0)
    net.pump(2.0)
    assert_pair(na, nb)
    assert a.stats["followup_exchanges"] == 4


def test_a_refused_followup_fails_the_exchange_cleanly(monkeypatch):
    """The responder expects the agreed method in IKE_FOLLOWUP_KE; another gets NO_PROPOSAL_CHOSEN,
    the initiator gives that Child SA up (nothing was installed at either end) and the IKE SA
    stays."""
    a, b, net = pair(esp="aes256gcm16-x25519-ke1_mlkem768")
    sa_a, sa_b = up(a, b, net)
    orig = followup_ke.FollowupKeTask.build

    def build(self, sa, now):
        payloads = orig(self, sa, now)
        self.method = DhGroup.MLKEM_1024
        self.priv, pub = ikecrypto.dh_group(self.method).generate()
        return [payloads[0], type(payloads[1])(self.method, pub)]
    monkeypatch.setattr(followup_ke.FollowupKeTask, "build", build)
    n0 = len(net.events[A])
    a.create_child(sa_a.ike_id, "net", 1.0)
    net.pump(1.0)
    failed = [e for e in net.events[A][n0:] if type(e).__name__ == "ChildSaFailed"]
    assert failed and "NO_PROPOSAL_CHOSEN" in failed[0].reason, net.events[A][n0:]
    assert len(sa_a.children) == len(sa_b.children) == 1 and not kinds(net.events[B][1:], ChildSaInstall)
    assert a.ike_sas() == [sa_a] and b.ike_sas() == [sa_b] and not sa_b.followup_waiting


def test_waiting_state_goes_with_its_ike_sa_and_is_bounded():
    a, b, net = pair(esp="aes256gcm16-x25519-ke1_mlkem768")
    sa_a, sa_b = up(a, b, net)
    owners = []

    class Owner:
        rekeys_ike = False
        down_cause = "timeout"

        def __init__(self):
            self.followups = followup_ke.Followups(((6, DhGroup.MLKEM_768),))
            self.dropped = False
            owners.append(self)

        def followups_dropped(self, sa):
            self.dropped = True
    for _ in range(followup_ke.MAX_WAITING + 1):
        followup_ke.wait(sa_b, Owner(), 1.0)
    assert len(sa_b.followup_waiting) == followup_ke.MAX_WAITING and owners[0].dropped
    b.delete_ike(sa_b.ike_id, 2.0)
    net.pump(2.0)
    assert not sa_b.followup_waiting and all(o.dropped for o in owners)
    assert b.stats["followup_states_dropped"] == followup_ke.MAX_WAITING + 1
