"""Proposals: strongSwan-style proposal strings, SA payload construction and selection
(RFC 7296 §2.7, §3.3), and the offload board's capability filter for Child SAs.

A proposal string such as ``"aes256gcm16-prfsha256-x25519"`` or ``"aes128-sha256-modp2048"`` lists
algorithms separated by ``-``; several of one kind are alternatives (an OR inside one proposal).
The keywords are strongSwan's (swanctl.conf), so a proposal line can be pasted:

  encryption   aes128 aes192 aes256 (AES-CBC; ``aes`` = aes128), aes128gcm16 aes192gcm16
               aes256gcm16 (also ...gcm128 and ...gcm), chacha20poly1305 (RFC 7634)
  integrity    sha256 sha384 sha512 (HMAC-SHA2, RFC 4868; also sha2_256 ...), sha1 / sha
               (HMAC-SHA1-96: legacy peers only, never in ``default``)
  PRF (IKE)    prfsha256 prfsha384 prfsha512, prfsha1 (legacy); without one a non-AEAD IKE
               proposal takes the PRF of its integrity algorithm
  key exchange modp2048 modp3072 modp4096 ecp256 ecp384 ecp521 x25519 (curve25519) x448
               (curve448) mlkem768 mlkem1024; ``none`` (ESP: PFS optional)
  additional   ke1_<method> .. ke7_<method> (RFC 9370 key exchanges after the first, e.g.
               ``aes256gcm16-prfsha384-x25519-ke1_mlkem768``); ``keN_none`` makes one optional
  ESN (ESP)    esn noesn

``default`` (a whole proposal on its own) expands as strongSwan's does, restricted to what is
implemented here and without SHA-1: for IKE two proposals, a non-AEAD one first,
``aes128-aes192-aes256-sha256-sha384-sha512-prfsha256-prfsha384-prfsha512-<KE>`` and then
``aes128gcm16-aes192gcm16-aes256gcm16-chacha20poly1305-prfsha256-prfsha384-prfsha512-<KE>``, with
<KE> = ``ecp256-ecp384-ecp521-x25519-x448-modp3072-modp4096-modp2048`` (strongSwan: elliptic
curves, then MODP >= 3072, then MODP-2048; the order of its plugins decides within each); for ESP
an AEAD proposal first, ``aes128gcm16-aes192gcm16-aes256gcm16``, then
``aes128-aes192-aes256-sha256-sha384-sha512`` (strongSwan 5.9 adds sha1 and aesxcbc there; 6.x
also lists every key exchange method with ``none`` for optional PFS). Only what the board runs
is ever negotiated for ESP (``filter_child_specs``).
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field, replace

from .constants import ADDITIONAL_KE_TYPES, DhGroup, Encr, Esn, Integ, Prf, ProtocolId, TransformType
from .crypto import CHACHA_KEY_BITS, is_aead
from .payloads import Proposal, Transform

_PRF_FOR_INTEG = {Integ.HMAC_SHA2_256_128: Prf.HMAC_SHA2_256, Integ.HMAC_SHA2_384_192: Prf.HMAC_SHA2_384,
                  Integ.HMAC_SHA2_512_256: Prf.HMAC_SHA2_512, Integ.HMAC_SHA1_96: Prf.HMAC_SHA1}

_INTEG = {"sha256": Integ.HMAC_SHA2_256_128, "sha2_256": Integ.HMAC_SHA2_256_128,
          "sha384": Integ.HMAC_SHA2_384_192, "sha2_384": Integ.HMAC_SHA2_384_192,
          "sha512": Integ.HMAC_SHA2_512_256, "sha2_512": Integ.HMAC_SHA2_512_256,
          "sha1": Integ.HMAC_SHA1_96, "sha": Integ.HMAC_SHA1_96}
_PRF = {"prfsha256": Prf.HMAC_SHA2_256, "prfsha384": Prf.HMAC_SHA2_384, "prfsha512": Prf.HMAC_SHA2_512,
        "prfsha1": Prf.HMAC_SHA1}
_DH = {"modp2048": DhGroup.MODP_2048, "modp3072": DhGroup.MODP_3072, "modp4096": DhGroup.MODP_4096,
       "ecp256": DhGroup.ECP_256, "ecp384": DhGroup.ECP_384, "ecp521": DhGroup.ECP_521,
       "x25519": DhGroup.CURVE25519, "curve25519": DhGroup.CURVE25519,
       "x448": DhGroup.CURVE448, "curve448": DhGroup.CURVE448,
       "mlkem768": DhGroup.MLKEM_768, "mlkem1024": DhGroup.MLKEM_1024,
       "none": DhGroup.NONE, "modpnone": DhGroup.NONE}
_CHACHA = {"chacha20poly1305": CHACHA_KEY_BITS, "chacha20poly1305compat": CHACHA_KEY_BITS}
_ESN = {"esn": Esn.YES, "noesn": Esn.NO}
_AES = re.compile(r"^aes(128|192|256)?(gcm(16|128)?)?$")
_AKE = re.compile(r"^ke([1-7])_(.+)$")

# the names describe() prints (the first keyword of each)
_INTEG_NAME = {Integ.HMAC_SHA2_256_128: "sha256", Integ.HMAC_SHA2_384_192: "sha384",
               Integ.HMAC_SHA2_512_256: "sha512", Integ.HMAC_SHA1_96: "sha1"}
_PRF_NAME = {v: k for k, v in _PRF.items()}
_DH_NAME = {DhGroup.MODP_2048: "modp2048", DhGroup.MODP_3072: "modp3072", DhGroup.MODP_4096: "modp4096",
            DhGroup.ECP_256: "ecp256", DhGroup.ECP_384: "ecp384", DhGroup.ECP_521: "ecp521",
            DhGroup.CURVE25519: "x25519", DhGroup.CURVE448: "x448", DhGroup.MLKEM_768: "mlkem768",
            DhGroup.MLKEM_1024: "mlkem1024", DhGroup.NONE: "none"}

# what the IKE SA itself can use (crypto.py implements these); SHA-1 only for legacy peers
IKE_INTEG_OK = {Integ.HMAC_SHA2_256_128, Integ.HMAC_SHA2_384_192, Integ.HMAC_SHA2_512_256, Integ.HMAC_SHA1_96}
IKE_PRF_OK = {Prf.HMAC_SHA2_256, Prf.HMAC_SHA2_384, Prf.HMAC_SHA2_512, Prf.HMAC_SHA1}

_DEFAULT_KE = "ecp256-ecp384-ecp521-x25519-x448-modp3072-modp4096-modp2048"
DEFAULT_PROPOSALS = {
    ProtocolId.IKE: ("aes128-aes192-aes256-sha256-sha384-sha512-prfsha256-prfsha384-prfsha512-" + _DEFAULT_KE,
                     "aes128gcm16-aes192gcm16-aes256gcm16-chacha20poly1305-prfsha256-prfsha384-prfsha512-"
                     + _DEFAULT_KE),
    ProtocolId.ESP: ("aes128gcm16-aes192gcm16-aes256gcm16", "aes128-aes192-aes256-sha256-sha384-sha512"),
}


class ProposalError(ValueError):
    """A proposal string that cannot be used; the message names the offending token."""


@dataclass(frozen=True)
class ProposalSpec:
    """One configured proposal: alternatives per transform type, in preference order.
    ``encr`` holds (transform id, key bits); ``dh`` is empty for 'no PFS' in ESP proposals (0 in
    it: PFS optional). ``ake``: RFC 9370's additional key exchanges, ((transform type 6..12,
    (methods ...)), ...) in type order, 0 among the methods: that one is optional."""
    protocol: int
    encr: tuple = ()
    integ: tuple = ()
    prf: tuple = ()
    dh: tuple = ()
    esn: tuple = ()
    ake: tuple = ()

    @property
    def aead(self) -> bool:
        return bool(self.encr) and is_aead(self.encr[0][0])

    def transforms(self, with_dh: bool = True) -> list[Transform]:
        t = [Transform(TransformType.ENCR, e, wire_key_len(e, b)) for e, b in self.encr]
        t += [Transform(TransformType.PRF, p) for p in self.prf]
        t += [Transform(TransformType.INTEG, i) for i in self.integ]
        if with_dh:
            t += [Transform(TransformType.DH, d) for d in self.dh]
        t += [Transform(TransformType.ESN, e) for e in self.esn]
        if with_dh:
            t += [Transform(ttype, m) for ttype, methods in self.ake for m in methods]
        return t

    def to_proposal(self, num: int, spi: bytes = b"", with_dh: bool = True) -> Proposal:
        return Proposal(num, self.protocol, spi, self.transforms(with_dh))

    def __str__(self):
        return describe(self)


def wire_key_len(encr: int, bits: int) -> int | None:
    """The Key Length attribute of an encryption transform: none for ChaCha20-Poly1305, whose key
    size is fixed (RFC 7634 §2, §4)."""
    return None if encr == Encr.CHACHA20_POLY1305 else bits


def parse_proposals(texts, protocol: int = ProtocolId.IKE) -> list[ProposalSpec]:
    """Parse configured proposal strings; ``default`` stands for DEFAULT_PROPOSALS[protocol]."""
    out = []
    for t in texts:
        if isinstance(t, str) and t.strip().lower() == "default":
            out += [parse_proposal(d, protocol) for d in DEFAULT_PROPOSALS[int(protocol)]]
        else:
            out.append(parse_proposal(t, protocol))
    return out


def parse_proposal(text: str, protocol: int = ProtocolId.IKE) -> ProposalSpec:
    """Parse one strongSwan-style proposal string for IKE or ESP."""
    encr, integ, prf, dh, esn = [], [], [], [], []
    ake: dict[int, list] = {}
    if not isinstance(text, str) or not text.strip():
        raise ProposalError("empty proposal")
    if text.strip().lower() == "default":
        raise ProposalError("'default' is a proposal of its own: list it alone")
    for tok in text.strip().lower().split("-"):
        m = _AES.match(tok)
        a = _AKE.match(tok)
        if m:
            bits = int(m.group(1) or 128)
            if m.group(2):
                encr.append((Encr.AES_GCM_16, bits))
            else:
                encr.append((Encr.AES_CBC, bits))
        elif tok in _CHACHA:
            encr.append((Encr.CHACHA20_POLY1305, _CHACHA[tok]))
        elif tok in _INTEG:
            integ.append(_INTEG[tok])
        elif tok in _PRF:
            if protocol != ProtocolId.IKE:
                raise ProposalError(f"'{tok}': a PRF has no place in an ESP proposal")
            prf.append(_PRF[tok])
        elif tok in _DH:
            dh.append(_DH[tok])
        elif a and a.group(2) in _DH:
            ake.setdefault(TransformType.ADDITIONAL_KE_1 + int(a.group(1)) - 1, []).append(_DH[a.group(2)])
        elif tok in _ESN:
            if protocol == ProtocolId.IKE:
                raise ProposalError(f"'{tok}': ESN has no place in an IKE proposal")
            esn.append(_ESN[tok])
        else:
            raise ProposalError(f"unknown algorithm '{tok}'")
    if not encr:
        raise ProposalError(f"'{text}': no encryption algorithm")
    aeads = {is_aead(e) for e, _ in encr}
    if len(aeads) > 1:
        raise ProposalError(f"'{text}': mixes AEAD and non-AEAD ciphers; use two proposals")
    aead = aeads.pop()
    if aead and integ:
        raise ProposalError(f"'{text}': an AEAD cipher takes no integrity algorithm (RFC 5282 §8)")
    if not aead and not integ:
        raise ProposalError(f"'{text}': needs an integrity algorithm")
    if ake and not any(dh):
        raise ProposalError(f"'{text}': additional key exchanges (keN_) need a first key exchange method")
    if protocol == ProtocolId.IKE:
        if not prf:
            if aead:
                raise ProposalError(f"'{text}': an AEAD IKE proposal needs a PRF (e.g. prfsha256)")
            prf = [_PRF_FOR_INTEG[i] for i in integ]
        if not dh:
            raise ProposalError(f"'{text}': an IKE proposal needs a DH group")
        if DhGroup.NONE in dh:
            raise ProposalError(f"'{text}': an IKE proposal needs a key exchange ('none' is for ESP)")
        for i in integ:
            if i not in IKE_INTEG_OK:
                raise ProposalError(f"'{text}': integrity {i.name} is not supported for IKE")
        for p in prf:
            if p not in IKE_PRF_OK:
                raise ProposalError(f"'{text}': PRF {Prf(p).name} is not supported for IKE")
    else:
        esn = esn or [Esn.NO]
    if dh == [DhGroup.NONE]:
        dh = []                 # only 'none': no PFS
    return ProposalSpec(int(protocol), tuple(_dedup(encr)), tuple(_dedup(integ)), tuple(_dedup(prf)),
                        tuple(_dedup(dh)), tuple(_dedup(esn)),
                        tuple((t, tuple(_dedup(ake[t]))) for t in sorted(ake)))


def _dedup(seq):
    out = []
    for x in seq:
        if x not in out:
            out.append(x)
    return out


def _encr_name(e: int, b: int) -> str:
    if e == Encr.AES_GCM_16:
        return f"aes{b}gcm16"
    if e == Encr.AES_CBC:
        return f"aes{b}"
    if e == Encr.CHACHA20_POLY1305:
        return "chacha20poly1305"
    return f"encr{e}/{b}"


def describe(spec: ProposalSpec) -> str:
    parts = [_encr_name(e, b) for e, b in spec.encr]
    parts += [_INTEG_NAME.get(i, f"integ{i}") for i in spec.integ]
    parts += [_PRF_NAME.get(p, f"prf{p}") for p in spec.prf]
    parts += [_DH_NAME.get(d, f"dh{d}") for d in spec.dh]
    for ttype, methods in spec.ake:
        parts += [f"ke{ttype - TransformType.ADDITIONAL_KE_1 + 1}_" + _DH_NAME.get(m, f"dh{m}") for m in methods]
    if spec.protocol != ProtocolId.IKE and spec.esn != (Esn.NO,):
        parts += ["esn" if e == Esn.YES else "noesn" for e in spec.esn]
    return "-".join(parts)


# ---------------------------------------------------------------- offload capabilities

@dataclass(frozen=True)
class OffloadCapabilities:
    """What the ESP processor (the offload board) can run, as the offload layer reports it.

    ``transforms`` holds (encr transform id, key bits, integ transform id) tuples, integ 0 for
    AEADs; e.g. a MicroPython board with only cryptolib AES-CBC reports
    ``{(ENCR_AES_CBC, 128, AUTH_HMAC_SHA2_256_128)}``. ``esn`` says whether it does 64-bit
    sequence numbers. Child SA proposals we offer or accept are restricted to these.
    ``max_ts``: the traffic selectors an SA holds each way (None: no limit); a Child SA's
    selectors are narrowed to as many (RFC 7296 §2.9), and an answer with more is refused.
    """
    transforms: frozenset = field(default_factory=frozenset)
    esn: bool = False
    max_ts: int | None = None

    def allows(self, encr: int, bits: int, integ: int, esn: int = Esn.NO) -> bool:
        return (encr, bits, integ) in self.transforms and (esn == Esn.NO or self.esn)

    @classmethod
    def from_proposals(cls, texts, esn: bool = False) -> "OffloadCapabilities":
        """Capabilities covering everything the ESP proposal strings ``texts`` name."""
        out = set()
        for t in texts:
            s = parse_proposal(t, ProtocolId.ESP)
            for e, b in s.encr:
                for i in (s.integ or (Integ.NONE,)):
                    out.add((int(e), b, int(i)))
        return cls(frozenset(out), esn)


def filter_child_specs(specs, caps: OffloadCapabilities) -> list[ProposalSpec]:
    """Cached front of :func:`_filter_child_specs` (configs and capabilities rarely change)."""
    return list(_filter_cached(tuple(specs), caps))


@functools.lru_cache(maxsize=1024)
def _filter_cached(specs, caps):
    return tuple(_filter_child_specs(specs, caps))


def _filter_child_specs(specs, caps: OffloadCapabilities) -> list[ProposalSpec]:
    """Restrict ESP proposals to the board's capabilities. A proposal whose every combination is
    allowed is kept whole; otherwise it is split into one proposal per cipher with the allowed
    integrity algorithms, so that nothing the board cannot do can be negotiated."""
    out = []
    for s in specs:
        esn = tuple(e for e in s.esn if e == Esn.NO or caps.esn)
        if not esn:
            continue
        integs = s.integ or (Integ.NONE,)
        allowed = {(e, b): [i for i in integs if caps.allows(e, b, i)] for e, b in s.encr}
        if all(len(v) == len(integs) for v in allowed.values()):
            out.append(replace(s, esn=esn))
            continue
        for (e, b), ok in allowed.items():
            if ok:
                out.append(replace(s, encr=((e, b),), integ=tuple(i for i in ok if i != Integ.NONE), esn=esn))
    return out


# ---------------------------------------------------------------- selection (§2.7, §3.3.6)

@dataclass(frozen=True)
class Chosen:
    """The result of a negotiation: one transform of each type (0 where absent). ``ake``: the
    additional key exchanges agreed (RFC 9370), ((transform type, method), ...) in type order,
    those negotiated to NONE left out."""
    protocol: int
    num: int
    spi: bytes
    encr: int
    encr_bits: int
    integ: int = 0
    prf: int = 0
    dh: int = 0
    esn: int = 0
    integ_none_sent: bool = False   # peer listed INTEG NONE with its AEAD; echo it back
    ake: tuple = ()

    def to_proposal(self, spi: bytes) -> Proposal:
        t = [Transform(TransformType.ENCR, self.encr, wire_key_len(self.encr, self.encr_bits))]
        if self.prf:
            t.append(Transform(TransformType.PRF, self.prf))
        if self.integ or self.integ_none_sent:
            t.append(Transform(TransformType.INTEG, self.integ))
        if self.dh:
            t.append(Transform(TransformType.DH, self.dh))
        if self.protocol != ProtocolId.IKE:
            t.append(Transform(TransformType.ESN, self.esn))
        t += [Transform(ttype, m) for ttype, m in self.ake]
        return Proposal(self.num, self.protocol, spi, t)

    def describe(self) -> str:
        return _describe_algs(self.protocol, self.encr, self.encr_bits, self.integ, self.prf, self.dh,
                              self.esn, self.ake)


@functools.lru_cache(maxsize=256)
def _describe_algs(protocol, encr, bits, integ, prf, dh, esn, ake=()) -> str:
    return describe(ProposalSpec(protocol, ((encr, bits),), (integ,) if integ else (), (prf,) if prf else (),
                                 (dh,) if dh else (), (esn,), tuple((t, (m,)) for t, m in ake)))


def esp_keyword(encr: int, bits: int, integ: int) -> str:
    """strongSwan's ESP proposal keywords for one transform, e.g. 'aes256-sha384'."""
    return _describe_algs(ProtocolId.ESP, encr, bits, integ, 0, 0, 0)


def _pick(ours, theirs):
    """First of our alternatives that the peer also offers (our preference order)."""
    for x in ours:
        if x in theirs:
            return x
    return None


def select(peer: list[Proposal], ours: list[ProposalSpec], protocol: int, ignore_dh: bool = False,
           caps: OffloadCapabilities | None = None) -> Chosen | None:
    """Choose one of the peer's proposals that one of ours covers, in our order of preference.

    ``ignore_dh``: IKE_AUTH carries the first Child SA, whose keys come from the IKE SA, so key
    exchange transforms in its SA payload are ignored (§1.2, RFC 9370 §2.2.3). ``caps`` further
    restricts ESP choices.
    """
    for spec in ours:
        for p in peer:
            if p.protocol != protocol:
                continue
            if protocol == ProtocolId.IKE and p.spi not in (b"",) and len(p.spi) != 8:
                continue
            if protocol in (ProtocolId.ESP, ProtocolId.AH) and len(p.spi) != 4:
                continue
            c = _match(spec, p, protocol, ignore_dh, caps)
            if c is not None:
                return c
    return None


_TYPES = (TransformType.ENCR, TransformType.PRF, TransformType.INTEG, TransformType.DH, TransformType.ESN) + \
    ADDITIONAL_KE_TYPES


def _encr_key(tid: int, key_len) -> tuple:
    """(transform id, key bits) of an ENCR transform as received: ChaCha20-Poly1305 comes without
    a Key Length (RFC 7634 §4), or with 256 from older peers (strongSwan's 'compat')."""
    if tid == Encr.CHACHA20_POLY1305 and key_len in (None, CHACHA_KEY_BITS):
        return tid, CHACHA_KEY_BITS
    return tid, key_len


def _pick_ake(spec: ProposalSpec, by: dict, ignore_dh: bool):
    """RFC 9370 §2.2.1: one method per additional key exchange type; a type the peer does not
    list is NONE. Returns the agreed ((type, method), ...) without the NONEs, or None."""
    if ignore_dh:
        return ()
    ours = dict(spec.ake)
    out = []
    for ttype in ADDITIONAL_KE_TYPES:
        theirs = [t.tid for t in by[ttype]] or [0]
        m = _pick(ours.get(ttype, (0,)), theirs)
        if m is None:
            return None
        if m:
            out.append((ttype, m))
    return tuple(out)


def _match(spec: ProposalSpec, p: Proposal, protocol, ignore_dh, caps) -> Chosen | None:
    by = {t: [] for t in _TYPES}
    for t in p.transforms:
        if t.unknown_attr:
            continue        # §3.3.6: a transform with an unknown attribute is not acceptable
        if t.ttype not in by:
            return None     # unknown transform type: the proposal cannot be accepted
        by[t.ttype].append(t)
    peer_encr = [_encr_key(t.tid, t.key_len) for t in by[1]]
    encr_opts = [eb for eb in spec.encr if eb in peer_encr]
    if not encr_opts:
        return None
    peer_integ = [t.tid for t in by[3]]
    peer_prf = [t.tid for t in by[2]]
    peer_dh = [t.tid for t in by[4]] or [0]
    peer_esn = [t.tid for t in by[5]] or [Esn.NO]
    ake = _pick_ake(spec, by, ignore_dh)
    if ake is None:
        return None
    for encr, bits in encr_opts:
        aead = is_aead(encr)
        if aead:
            if any(i != Integ.NONE for i in peer_integ):
                continue    # RFC 5282 §8: AEAD with a real integrity transform is malformed
            integ = Integ.NONE
        else:
            integ = _pick(spec.integ, peer_integ)
            if integ is None:
                continue
        prf = 0
        if protocol == ProtocolId.IKE:
            prf = _pick(spec.prf, peer_prf)
            if prf is None:
                continue
        elif peer_prf:
            return None
        if ignore_dh:
            dh = 0
        else:
            dh = _pick(spec.dh or (0,), peer_dh)
            if dh is None:
                continue
        if ake and not dh:
            return None     # RFC 9370 §2.2.1: additional key exchanges come after a first one
        esn = 0
        if protocol != ProtocolId.IKE:
            esn = _pick(spec.esn, peer_esn)
            if esn is None:
                continue
            if caps is not None and not caps.allows(encr, bits, integ, esn):
                continue
        return Chosen(protocol, p.num, p.spi, int(encr), bits, int(integ), int(prf), int(dh), int(esn),
                      integ_none_sent=aead and bool(peer_integ), ake=ake)
    return None


def accept_response(resp: Proposal, offered: list[Proposal], protocol: int) -> Chosen | None:
    """Initiator side (§3.3.6): the responder's single proposal must hold exactly one transform of
    each type and match the proposal we sent under that number."""
    if resp.protocol != protocol:
        return None
    mine = [p for p in offered if p.num == resp.num and p.protocol == protocol]
    if not mine:
        return None
    by = {}
    for t in resp.transforms:
        if t.ttype in by or t.unknown_attr:
            return None
        by[t.ttype] = t
    offered_keys = {t.key() for t in mine[0].transforms}
    for t in resp.transforms:
        if t.key() not in offered_keys and not (t.ttype == TransformType.INTEG and t.tid == 0) and \
                not (t.ttype in ADDITIONAL_KE_TYPES and t.tid == 0):
            return None
    e = by.get(TransformType.ENCR)
    if e is None:
        return None
    aead = is_aead(e.tid)
    integ = by.get(TransformType.INTEG)
    if not aead and (integ is None or integ.tid == 0):
        return None
    if aead and integ is not None and integ.tid != 0:
        return None
    prf = by.get(TransformType.PRF)
    if protocol == ProtocolId.IKE and prf is None:
        return None
    dh = by.get(TransformType.DH)
    if protocol == ProtocolId.IKE and dh is None:
        return None
    # RFC 9370 §2.2.1: an additional key exchange we made mandatory must have been chosen
    ake = []
    for ttype in ADDITIONAL_KE_TYPES:
        offered_m = [t.tid for t in mine[0].transforms if t.ttype == ttype]
        got = by.get(ttype)
        m = got.tid if got is not None else 0
        if offered_m and 0 not in offered_m and not m:
            return None
        if m:
            ake.append((ttype, m))
    if ake and (dh is None or not dh.tid):
        return None
    esn = by.get(TransformType.ESN)
    if protocol == ProtocolId.IKE:
        if len(resp.spi) not in (0, 8):
            return None
    elif len(resp.spi) != 4:
        return None
    tid, bits = _encr_key(e.tid, e.key_len)
    return Chosen(protocol, resp.num, resp.spi, tid, bits or 0, integ.tid if integ else 0,
                  prf.tid if prf else 0, dh.tid if dh else 0, esn.tid if esn else 0, ake=tuple(ake))
