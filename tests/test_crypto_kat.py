"""Known-answer tests for the IKEv2 key derivation and primitives.

Sources (values copied as published test data):
* NIST CAVP SP 800-135 IKEv2 KDF vectors (ikev2.rsp; SHA-1 COUNT 0 in full, SHA-256/384 via the NSS
  and OpenSSL copies of the same CAVP samples)
* RFC 4231 test case 1 (HMAC-SHA-256/384/512, i.e. PRF_HMAC_SHA2_*, RFC 4868 §2.7.1)
* RFC 7748 §6.1 (X25519), RFC 5903 §8.1 (ECP-256), RFC 3526 §3 (group 14 prime)
"""
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, x25519

from host.ike.constants import DhGroup, Encr, Integ, Prf
from host.ike.crypto import (
    MODP_2048_P, AesCbcHmacSk, AesGcmSk, CryptoError, dh_group, prf_alg,
)
from host.ike.keys import child_keymat, derive_ike_keys, skeyseed, skeyseed_rekey

H = bytes.fromhex


# ---------------------------------------------------------------- CAVP SHA-1, COUNT 0 (full record)

SHA1_NI, SHA1_NR = H("3651fef5c9c35e93"), H("c09a8b90a3f04d59")
SHA1_GIR = H("d084a30166a50fb7325c3960874a839449ef9741c2f4f947d0201dd8c1269273d79509f37e3ca3eb4fa2fe2a28254e28"
             "9cd3f34dad4eb4df1a07685a4b8a94fa61e2491f7598b3ce65547ff133b3f63d1ac4175eaa695033f3cedb026a6873a3"
             "6455172a8540b8a5d23a0143bed0390ee49b168269d75fffee9fb62be965993c")
SHA1_GIR_NEW = H("52f00ab174c25d5b7139ae5ff4e8e9eddee5992d2e36adf8a559ffd90dab1442e4fbe429d320c0f33552a17d1557fa41"
                 "ea70e8fb916c4fa27ed52b5f8ebd8461afa78f1159159a64055ac5f6319e29c28eae58cbc6847770f32c3fed1d047504"
                 "84f854790f95e9ec01bc5bc461f24966462e359511329305038e94deb6dd42c2")
SHA1_SPII, SHA1_SPIR = H("8e5c3ae507221684"), H("b1f201bb155c3acd")
SHA1_SKEYSEED = H("cd2e8050137832245f1dbacc6e4f0a92f94d45d6")
SHA1_DKM = H("6f1b12cad3cbe097b35430356d869d54cddb0198ec859174d53ceb92dddedbe2436db69f60977c58fa63bbb667f8d369"
             "20b109baae8f6c61a9ac49feda01843225d080ec5539d5881a25521ffb2a0a91874a9c0a27fcc2d717eb8963a9e3a89c"
             "7ab264757284c28cf8c3ca40576f4220b052b1fb8e9ad60ba3c80557323331a8cbb89f20")
SHA1_DKM_CHILD = H("4727dc0ef94eb326ce131cf282fb652faa638ad0ddae3786a11bcc0309876009f8c485de011ad962c5b1ca8a41ff8145"
                   "445749079c5686e26ffebbc342f06981f3da745e11ca0976424d1f8caec623d59dc7186deb20a27b411d1dcb70a36544"
                   "0bf7de905088b0692e8addc094e18d1939bdb67e89798ca6b239e2ccb81c2409dac0106c")
SHA1_DKM_CHILD_DH = H("b109c21ad4c0797768c1cec9e63554681e48f224bca7f23c20c4ea7041983451e9aa1d5408656c8a975ff1b9d9a12c75"
                      "ffeb64bdecb30174664cccb4e14f1c377b7f6d1525af77c7092aac3e47f917ebae8297fb5539d2008ce830823a09cc19"
                      "7361d4a289c72745f6ce9fefe812be5bf55b3200fbb82e41a4a40877d3fe106db909707b")
SHA1_SKEYSEED_REKEY = H("3b03bce748c96d5e8306918d2ff89b68f0648da3")


def test_cavp_sha1_full_record():
    prf = prf_alg(Prf.HMAC_SHA1)
    seed = skeyseed(prf, SHA1_NI, SHA1_NR, SHA1_GIR)
    assert seed == SHA1_SKEYSEED
    dkm = prf.plus(seed, SHA1_NI + SHA1_NR + SHA1_SPII + SHA1_SPIR, len(SHA1_DKM))
    assert dkm == SHA1_DKM
    sk_d = dkm[:20]
    assert prf.plus(sk_d, SHA1_NI + SHA1_NR, len(SHA1_DKM_CHILD)) == SHA1_DKM_CHILD
    assert prf.plus(sk_d, SHA1_GIR_NEW + SHA1_NI + SHA1_NR, len(SHA1_DKM_CHILD_DH)) == SHA1_DKM_CHILD_DH
    assert skeyseed_rekey(prf, sk_d, SHA1_GIR_NEW, SHA1_NI, SHA1_NR) == SHA1_SKEYSEED_REKEY


def test_cavp_sha1_keymat_split_follows_2_17():
    """child_keymat takes I->R keys first, encryption before integrity (§2.17)."""
    prf = prf_alg(Prf.HMAC_SHA1)
    sk_d = SHA1_DKM[:20]
    k = child_keymat(prf, sk_d, SHA1_NI, SHA1_NR, Encr.AES_CBC, 128, Integ.HMAC_SHA2_256_128)
    km = SHA1_DKM_CHILD
    assert (k.encr_i, k.integ_i, k.encr_r, k.integ_r) == (km[:16], km[16:48], km[48:64], km[64:96])
    assert k.salt_i == k.salt_r == b""
    g = child_keymat(prf, sk_d, SHA1_NI, SHA1_NR, Encr.AES_GCM_16, 256, Integ.NONE, SHA1_GIR_NEW)
    km = SHA1_DKM_CHILD_DH
    assert (g.encr_i, g.salt_i, g.encr_r, g.salt_r) == (km[:32], km[32:36], km[36:68], km[68:72])
    assert g.integ_i == g.integ_r == b""


def test_ike_keys_split_follows_2_14():
    prf = prf_alg(Prf.HMAC_SHA1)
    k = derive_ike_keys(prf, SHA1_SKEYSEED, SHA1_NI, SHA1_NR, SHA1_SPII, SHA1_SPIR, Encr.AES_CBC, 128,
                        Integ.HMAC_SHA2_256_128)
    d = SHA1_DKM
    assert k.sk_d == d[:20]
    assert k.sk_ai == d[20:52] and k.sk_ar == d[52:84]
    assert k.sk_ei == d[84:100] and k.sk_er == d[100:116]
    assert k.sk_pi[:16] == d[116:132]          # the CAVP record holds 132 bytes
    assert "redacted" in repr(k)


# ---------------------------------------------------------------- CAVP SHA-256 / SHA-384

CAVP = {
    Prf.HMAC_SHA2_256: dict(
        gir=H("0f4d257d7a58fc4545c7d7a88119eee5d5c9690c5b4c989171d3abbfd99d1d29"),
        ni=H("3f302be1abcb28e1"), nr=H("8c332ee006064c9b"),
        spii=H("40dac39e1e1a8640"), spir=H("8619a1cf9a6e4c07"),
        skeyseed=H("5f00d1bd2c58ec224b1e6b71fa0f19a1faa7a193952c444411b47c1a9d8ba6fe"),
        dkm=H("0b137d669b0947d7d026d593f0305ad401ff0c471357d695778a9c7f4b4869ece98aca531188d16041b3bb936d2dbb3b"
              "4993a6e768a809160de45d0283f273a6cdf6854379e31be72b8d3d1fa990cf9c5b015ca9f918a7df6253c958114a09d4"
              "e1c19bdcd4db14b29d98db1a74ad405c588662c14a04d0d36aa4ab55e90f8986d12d4aad"),
        gir_new=H("25f3b12d6f282739256e39bf54eda53b60ffcf379bb7bcc90c27b4c4c578616c"),
        skeyseed_rekey=H("2d63f6debc92048b4fef3889c4c99ca67d6496e0fac14a2bca9a2d6566ff2398")),
    Prf.HMAC_SHA2_384: dict(
        gir=H("d3288cd87565101e88fe3bad918f31939d8dd26ff1071f8b2d7f447524e58d7c"),
        ni=H("fd1b572a8e735591"), nr=H("6013b0ef88dacd3d"),
        spii=H("2116ad07ce61f749"), spir=H("24880e55f11a65b7"),
        skeyseed=H("69fe7a1ac94adaeb711295f5fe004b1a8d6a0b65d05692758ce8ad2f7a45f59d7d0b596f51f7dfcf3330061888f6a94f"),
        dkm=H("4f904c2025c90c817ea5ff9b662a6fdb445a73b57cdf09eacd379b95e1f03cacb04cd6deeda4f952191dd9bc1f7a9502"
              "471a648d74dc06d38112de48a42501f6b1a3ad55c2099cd9a648e5f17e5bf3e34bf9b5953decb768a34f875fe2b78dca"
              "0c2fcca81ec1a412006dfaed38fa06882e61f4c148105fb8e231fdb33c4d484c001721d4"),
        gir_new=H("3358f620539473aee8d07e779764c4c6a9aabddc79a28e136b3bac021dbde44a"),
        skeyseed_rekey=H("e0548c1682e13bce454026b3b1bdf42985b24e4e7408095a7c529de38c3d1fcb04c9fe6868042a34c9614c6c99e3fcea")),
}


@pytest.mark.parametrize("prf_id", sorted(CAVP))
def test_cavp_sha2(prf_id):
    v = CAVP[prf_id]
    prf = prf_alg(prf_id)
    seed = skeyseed(prf, v["ni"], v["nr"], v["gir"])
    assert seed == v["skeyseed"]
    assert prf.plus(seed, v["ni"] + v["nr"] + v["spii"] + v["spir"], len(v["dkm"])) == v["dkm"]
    sk_d = v["dkm"][:prf.out_len]
    assert skeyseed_rekey(prf, sk_d, v["gir_new"], v["ni"], v["nr"]) == v["skeyseed_rekey"]


def test_cavp_sha256_openssl_copy():
    """The SHA-256 COUNT 0 record with the 1024-bit g^ir (as in OpenSSL's evpkdf_ikev2 test)."""
    prf = prf_alg(Prf.HMAC_SHA2_256)
    seed = skeyseed(prf, SHA1_NI, SHA1_NR, SHA1_GIR)
    assert seed == H("efaa7ab0eaa85a3d0be2100cd4b6fe00ff5025a9eafddb3ef518e9f0d3fe60e6")
    dkm = prf.plus(seed, SHA1_NI + SHA1_NR + SHA1_SPII + SHA1_SPIR, 224)
    assert dkm == H("462b9dd525d4fd71169174272779e704baf62c6231779ae9efe8c58b21916b42010164af2111ebd762f6916ca9a6f0ee"
                    "05c8b320e4ee27705521de2589adea1878f1a551738af7c88dc4f0bb0c096a3f7d1f1a670fc79f49f678d60d665bb371"
                    "0c8657f03ba9f62b9a818d7a228968c506e237ae9502aa6db395c61ea6a3e79504f86b7368bfb5423df79e48809bbccd"
                    "49fd826d024f63d7c2a5566400a12e736aa034510428f5ea008fe2fc16886fa388274ea6c2b4fcfc6141bf04f8207ef8"
                    "afc224ea1059cb220dc0b23ac0e4ccda495a4e131b1d56e223aba5a48e8ed1f5")


def test_prf_plus_limits():
    prf = prf_alg(Prf.HMAC_SHA2_256)
    assert len(prf.plus(b"k", b"s", 255 * 32)) == 255 * 32
    with pytest.raises(CryptoError):
        prf.plus(b"k", b"s", 255 * 32 + 1)


# ---------------------------------------------------------------- RFC 4231 (PRF_HMAC_SHA2_*)

@pytest.mark.parametrize("prf_id,expect", [
    (Prf.HMAC_SHA2_256, "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
    (Prf.HMAC_SHA2_384, "afd03944d84895626b0825f4ab46907f15f9dadbe4101ec682aa034c7cebc59c"
                        "faea9ea9076ede7f4af152e8b2fa9cb6"),
    (Prf.HMAC_SHA2_512, "87aa7cdea5ef619d4ff0b4241a1d6cb02379f4e2ce4ec2787ad0b30545e17cde"
                        "daa833b7d6b8a702038b274eaea3f4e4be9d914eeb61f1702e696c203a126854"),
])
def test_prf_rfc4231_case1(prf_id, expect):
    assert prf_alg(prf_id)(b"\x0b" * 20, b"Hi There") == H(expect)


# ---------------------------------------------------------------- Diffie-Hellman

def _machin_pi(bits):
    guard = 64
    one = 1 << (bits + guard)

    def atan_inv(x):
        total = term = one // x
        n, sign = 1, -1
        while term:
            term //= x * x
            total += sign * (term // (2 * n + 1))
            sign, n = -sign, n + 1
        return total
    return (16 * atan_inv(5) - 4 * atan_inv(239)) >> guard


def test_modp2048_prime_is_rfc3526_formula():
    p = 2 ** 2048 - 2 ** 1984 - 1 + 2 ** 64 * (_machin_pi(1918) + 124476)
    assert MODP_2048_P == p


def test_x25519_rfc7748():
    g = dh_group(DhGroup.CURVE25519)
    alice = x25519.X25519PrivateKey.from_private_bytes(
        H("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"))
    bob_pub = H("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
    assert g.shared(alice, bob_pub) == H("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
    with pytest.raises(CryptoError):
        g.shared(alice, bytes(32))          # low-order point: all-zero secret (RFC 8031 §2.3)
    with pytest.raises(CryptoError):
        g.shared(alice, bob_pub[:31])


def test_ecp256_rfc5903():
    g = dh_group(DhGroup.ECP_256)
    i = ec.derive_private_key(int("c88f01f510d9ac3f70a292daa2316de544e9aab8afe84049c62a9c57862d1433", 16),
                              ec.SECP256R1())
    gr = H("d12dfb5289c8d4f81208b70270398c342296970a0bccb74c736fc7554494bf63"
           "56fbf3ca366cc23e8157854c13c58d6aac23f046ada30f8353e74f33039872ab")
    assert g.shared(i, gr) == H("d6840f6b42f6edafd13116e0e12565202fef8e9ece7dce03812464d04b9442de")
    bad = gr[:63] + bytes((gr[63] ^ 1,))       # not on the curve
    with pytest.raises(CryptoError):
        g.shared(i, bad)


@pytest.mark.parametrize("group", [DhGroup.MODP_2048, DhGroup.ECP_256, DhGroup.CURVE25519])
def test_dh_agreement_and_lengths(group):
    g = dh_group(group)
    a, apub = g.generate()
    b, bpub = g.generate()
    assert len(apub) == len(bpub) == g.public_len
    assert g.shared(a, bpub) == g.shared(b, apub)


def test_modp_rejects_degenerate_values():
    g = dh_group(DhGroup.MODP_2048)
    a, _ = g.generate()
    for y in (0, 1, MODP_2048_P - 1, MODP_2048_P):
        with pytest.raises(CryptoError):
            g.shared(a, y.to_bytes(256, "big"))


# ---------------------------------------------------------------- the Encrypted payload ciphers

def _pairs():
    k1, k2 = bytes(range(36)), bytes(range(36, 72))
    yield AesGcmSk(k1, k2), AesGcmSk(k2, k1)
    e1, e2, a1, a2 = bytes(16), bytes(range(16)), bytes(32), bytes(range(32))
    yield AesCbcHmacSk(e1, e2, Integ.HMAC_SHA2_256_128, a1, a2), AesCbcHmacSk(e2, e1, Integ.HMAC_SHA2_256_128, a2, a1)


@pytest.mark.parametrize("pair", list(_pairs()), ids=["gcm", "cbc-hmac"])
def test_sk_cipher_round_trip_and_tamper(pair):
    a, b = pair
    aad = b"H" * 32
    for n in (0, 1, 15, 16, 17, 100):
        plain = a.pad(bytes(range(n)))
        assert len(plain) == a.padded_len(n)
        wire = aad + a.seal(aad, plain)
        assert b.open_(wire, len(aad)) == plain
        for pos in (0, len(aad), len(wire) - 1):
            bad = bytearray(wire)
            bad[pos] ^= 0x80
            assert b.open_(bytes(bad), len(aad)) is None
        assert a.open_(wire, len(aad)) is None          # the other direction's key does not open it
