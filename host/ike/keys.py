"""Key derivation: SKEYSEED and the IKE SA keys (RFC 7296 §2.14), IKE SA rekey (§2.18) and Child SA
KEYMAT (§2.17), with RFC 9370's additional key exchanges (§2.2.2 after each IKE_INTERMEDIATE,
§2.2.4 for CREATE_CHILD_SA)."""
from __future__ import annotations

from dataclasses import dataclass

from .crypto import AEAD_SALT, PrfAlg, encr_key_bytes, integ_key_bytes, make_sk_cipher, prf_alg


def skeyseed(prf: PrfAlg, ni: bytes, nr: bytes, g_ir: bytes) -> bytes:
    """§2.14: SKEYSEED = prf(Ni | Nr, g^ir)."""
    return prf(ni + nr, g_ir)


def skeyseed_rekey(prf_old: PrfAlg, sk_d_old: bytes, g_ir_new: bytes, ni: bytes, nr: bytes,
                   additional: bytes = b"") -> bytes:
    """§2.18: SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr), with the old IKE SA's PRF. RFC 9370
    §2.2.4: the secrets of the additional key exchanges follow, SK(0) | Ni | Nr | SK(1) | ... | SK(n)."""
    return prf_old(sk_d_old, g_ir_new + ni + nr + additional)


def skeyseed_intermediate(prf: PrfAlg, sk_d: bytes, secret: bytes, ni: bytes, nr: bytes) -> bytes:
    """RFC 9370 §2.2.2: after the n-th IKE_INTERMEDIATE, SKEYSEED(n) = prf(SK_d(n-1), SK(n) | Ni |
    Nr); the keys follow from it as in §2.14 (same PRF, nonces and SPIs)."""
    return prf(sk_d, secret + ni + nr)


@dataclass(slots=True, repr=False)
class IkeKeys:
    """The seven IKE SA keys of §2.14. ``repr`` is suppressed: never log key material."""
    sk_d: bytes
    sk_ai: bytes
    sk_ar: bytes
    sk_ei: bytes
    sk_er: bytes
    sk_pi: bytes
    sk_pr: bytes

    def __repr__(self):
        return "IkeKeys(<redacted>)"


def derive_ike_keys(prf: PrfAlg, seed: bytes, ni: bytes, nr: bytes, spi_i: bytes, spi_r: bytes,
                    encr: int, encr_bits: int, integ: int) -> IkeKeys:
    """§2.14: {SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr} = prf+(SKEYSEED, Ni|Nr|SPIi|SPIr).
    For AEAD ciphers there are no SK_a keys and each SK_e carries the salt (RFC 5282 §7.1)."""
    pl = prf.key_len
    il = integ_key_bytes(integ)
    el = encr_key_bytes(encr, encr_bits)
    km = prf.plus(seed, ni + nr + spi_i + spi_r, 3 * pl + 2 * il + 2 * el)
    o = 0
    parts = []
    for n in (pl, il, il, el, el, pl, pl):
        parts.append(km[o:o + n])
        o += n
    return IkeKeys(*parts)


@dataclass(slots=True, repr=False)
class ChildKeys:
    """KEYMAT of one Child SA split per §2.17: all initiator->responder keys first, the encryption
    key before the integrity key. For AEADs ``encr_*`` keeps the key and ``salt_*`` the 4-byte salt."""
    encr_i: bytes
    salt_i: bytes
    integ_i: bytes
    encr_r: bytes
    salt_r: bytes
    integ_r: bytes

    def __repr__(self):
        return "ChildKeys(<redacted>)"


def child_keymat(prf: PrfAlg, sk_d: bytes, ni: bytes, nr: bytes, encr: int, encr_bits: int, integ: int,
                 g_ir_new: bytes | None = None, additional: bytes = b"") -> ChildKeys:
    """§2.17: KEYMAT = prf+(SK_d, Ni | Nr), or prf+(SK_d, g^ir (new) | Ni | Nr) with PFS; RFC 9370
    §2.2.4: prf+(SK_d, SK(0) | Ni | Nr | SK(1) | ... | SK(n)) with additional key exchanges."""
    el = encr_key_bytes(encr, encr_bits)
    il = integ_key_bytes(integ)
    salt = AEAD_SALT.get(encr, 0)
    seed = (g_ir_new or b"") + ni + nr + additional
    km = prf.plus(sk_d, seed, 2 * (el + il))
    ei, ai = km[:el], km[el:el + il]
    er, ar = km[el + il:2 * el + il], km[2 * el + il:]
    k = el - salt
    return ChildKeys(ei[:k], ei[k:], ai, er[:k], er[k:], ar)


def derive(sa, shared: bytes | None, seed: bytes | None = None):
    """The keys of IKE SA ``sa`` (§2.14): SKEYSEED from ``shared`` (g^ir) and the nonces, the seven
    keys, the SK cipher for our direction. A rekey (§2.18) or an additional key exchange (RFC 9370)
    passes its own ``seed``; the keys then use the SA's (new) PRF."""
    c = sa.chosen
    sa.prf = prf_alg(c.prf)
    if seed is None:
        seed = skeyseed(sa.prf, sa.ni, sa.nr, shared)
    sa.keys = k = derive_ike_keys(sa.prf, seed, sa.ni, sa.nr, sa.spi_i, sa.spi_r, c.encr, c.encr_bits,
                                  c.integ)
    if sa.initiator:
        sa.cipher = make_sk_cipher(c.encr, c.integ, k.sk_ei, k.sk_er, k.sk_ai, k.sk_ar)
    else:
        sa.cipher = make_sk_cipher(c.encr, c.integ, k.sk_er, k.sk_ei, k.sk_ar, k.sk_ai)
