"""Known-answer tests for every crypto backend this runtime has.

Vectors: FIPS 197 Appendix C (AES), draft-mcgrew-gcm-test-01 §4 (AES-GCM in ESP: key, salt ||
IV nonce, SPI || seq AAD), RFC 3602 §4 (AES-CBC), RFC 4868 §2.7.2.1 (HMAC-SHA-256-128), RFC 8439
§2.8.2 (ChaCha20-Poly1305), RFC 4868 §2.7.2.2/3 (HMAC-SHA-384-192, -512-256) where hashlib has them.
"""
from firmware.crypto import pure
from firmware.tests.espdata import backends, h

# (key, nonce = salt || IV, aad = SPI || [seq-hi ||] seq-lo, plaintext, ciphertext || tag)
GCM_CASES = [
    ("4c80cdefbb5d10da906ac73c3613a634", "2e443b684956ed7e3b244cfe", "000043218765432100000000",
     "45000048699a000080114db7c0a80102c0a801010a9bf15638d301000001000000000000045f736970045f756470"
     "037369700963796265726369747902646b000021000101020201",
     "fecf537e729d5b07dc30df528dd22b768d1b98736696a6fd348509fa13ceac34cfa2436f14a3f3cf65925bf1f4a1"
     "3c5d15b21e1884f5ff6247aeabb786b93bce61bc17d768fd9732459018148f6cbe722fd04796562dfdb4"),
    ("abbccddef00112233445566778899aababbccddef00112233445566778899aab", "112233440102030405060708",
     "4a2cbfe300000002",
     "4500003069a6400080062690c0a801029389155e0a9e008b2dc57ee0000000007002400020bf0000020405b4010104"
     "0201020201",
     "ff425c9b724599df7a3bcd510194e00d6a78107f1b0b1cbf06efae9d65a5d763748a637985771d347f0545659f14e9"
     "9def842d8eb335f4eecfdbf831824b4c4915956c96"),
    ("abbccddef00112233445566778899aab", "decaf888cafedebaceface74", "000001000000000000000001",
     "4500004933ba00007f119106c3fb1d10c2b1d326c02831ce0035dd7b800302d500004e20001e8c18d75b81dc91baa04"
     "76b91b924b280389d92c963bac046ec959b6266c04722b14923010101",
     "18a6fd42f72cbf4ab2a2ea901f73d814e3e7f243d95412e1c349c1d2fbec168f9190feebaf2cb01984e65863965d74"
     "72b79da345e0e780191f0d2f0e0f496c226f2127b27db35724e7845d68651f57e65f354f75ff17015769623436"),
    ("7d773d00c144c525ac619d18c84a3f47", "d966426743457e9182443bc6", "335467aeffffffff", "01020201",
     "437f866bcb3f699fe9b0822bac961c4504bef270"),
    ("6c6567616c697a656d6172696a75616e61616e64646f69746265666f72656961", "7475726e333021696765746d",
     "796b6963ffffffffffffffff",
     "45000030da3a00008001df3bc0a80005c0a800010800c6cd020007006162636465666768696a6b6c6d6e6f70717273"
     "7401020201",
     "f97ab2aa356d8edce17644ac8c78e25dd24dedbb29ebf1b64a274b39b49c3a864cd3d78ca4ae68a32b42458fb57dbe"
     "821dcc63b9d0937ba2945f669368661a329fb4c053"),
]

# (key, iv, plaintext, ciphertext)
CBC_CASES = [
    ("06a9214036b8a15b512e03d534120006", "3dafba429d9eb430b422da802c9fac41",
     "53696e676c6520626c6f636b206d7367", "e353779c1079aeb82708942dbe77181a"),
    ("c286696d887c9aa0611bbb3e2025a45a", "562e17996d093d28ddb3ba695a2e6f58",
     "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
     "d296cd94c2cccf8a3a863028b5e1dc0a7586602d253cfff91b8266bea6d61ab1"),
    # case 5: the ESP payload of a transport-mode ping (payload, padding 1..14, pad length, next header 1)
    ("90d382b410eeba7ad938c46cec1a82bf", "e96e8c08ab465763fd098d45dd3ff893",
     "08000ebda70a00008e9c083db95b070008090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f2021222324252627"
     "28292a2b2c2d2e2f303132333435363701020304050607080" "90a0b0c0d0e0e01",
     "f663c25d325c18c6a9453e194e120849a4870b66cc6b9965330013b4898dc856a4699e523a55db080b59ec3a8e4b7e52"
     "775b07d1db34ed9c538ab50c551b874aa269add047ad2d5913ac19b7cfbad4a6"),
]

# (key, data, HMAC-SHA-256-128)
HMAC_CASES = [
    ("0b" * 32, "4869205468657265", "198a607eb44bfbc69903a0f1cf2bbdc5"),
    ("4a656665" * 8, "7768617420646f2079612077616e7420666f72206e6f7468696e673f",
     "167f928588c5cc2eef8e3093caa0e87c"),
    ("aa" * 32, "dd" * 50, "cdcb1220d1ecccea91e53aba3092f962"),
    ("0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20", "cd" * 50,
     "372efcf9b40b35c2115b1346903d2ef4"),
]


def test_fips197_aes_block():
    pt = h("00112233445566778899aabbccddeeff")
    for key, ct in (("000102030405060708090a0b0c0d0e0f", "69c4e0d86a7b0430d8cdb78070b4c55a"),
                    ("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
                     "8ea2b7ca516745bfeafc49904b496089")):
        a = pure.Aes(h(key))
        assert a.encrypt_block(pt) == h(ct)
        assert a.decrypt_block(h(ct)) == pt


def test_gcm_known_answers():
    for be in backends():
        for key, nonce, aad, pt, ct in GCM_CASES:
            g = be.aes_gcm(h(key))
            assert g.encrypt(h(nonce), h(pt), h(aad)) == h(ct), (be.NAME, key)
            assert g.decrypt(h(nonce), h(ct), h(aad)) == h(pt), (be.NAME, key)


def test_gcm_rejects_any_flipped_bit():
    for be in backends():
        key, nonce, aad, pt, ct = GCM_CASES[3]
        g = be.aes_gcm(h(key))
        ct = h(ct)
        for i in (0, len(ct) - 16, len(ct) - 1):   # ciphertext, first and last tag byte
            bad = bytearray(ct)
            bad[i] ^= 1
            try:
                g.decrypt(h(nonce), bytes(bad), h(aad))
                raise AssertionError("%s accepted a flipped bit at %d" % (be.NAME, i))
            except be.AuthError:
                pass
        bad_aad = bytearray(h(aad))
        bad_aad[7] ^= 0x80   # another sequence number
        try:
            g.decrypt(h(nonce), ct, bytes(bad_aad))
            raise AssertionError("%s accepted a changed AAD" % be.NAME)
        except be.AuthError:
            pass


def test_cbc_known_answers():
    for be in backends():
        for key, iv, pt, ct in CBC_CASES:
            c = be.aes_cbc(h(key))
            assert c.encrypt(h(iv), h(pt)) == h(ct), (be.NAME, key)
            assert c.decrypt(h(iv), h(ct)) == h(pt), (be.NAME, key)


def test_cbc_refuses_partial_blocks():
    for be in backends():
        c = be.aes_cbc(bytes(16))
        for n in (1, 15, 17):
            try:
                c.encrypt(bytes(16), bytes(n))
                raise AssertionError("%s took %d bytes" % (be.NAME, n))
            except ValueError:
                pass


def test_hmac_sha256_128_known_answers():
    for be in backends():
        for key, data, mac in HMAC_CASES:
            d = h(data)
            hm = be.hmac_sha256(h(key))
            assert hm.digest(d)[:16] == h(mac), (be.NAME, key)
            # `tail` is the same as appending (ESN seq-hi, RFC 4303 §3.3.2.1)
            assert hm.digest(d[:5], d[5:]) == hm.digest(d)


def test_ct_equal():
    for be in backends():
        assert be.ct_equal(b"abcd", b"abcd")
        assert not be.ct_equal(b"abcd", b"abce")
        assert not be.ct_equal(b"abcd", b"abc")


def test_bad_key_sizes_refused():
    for be in backends():
        for n in (0, 15, 20, 33):
            for make in (be.aes_gcm, be.aes_cbc):
                try:
                    make(bytes(n))
                    raise AssertionError("%s took a %d-byte key" % (be.NAME, n))
                except ValueError:
                    pass


def test_pure_cbc_builds_only_the_schedule_it_uses():
    """Heap (issue 7): an outbound CBC SA only encrypts and an inbound one only decrypts, so a
    key keeps one schedule, made at first use; the key itself is the caller's object."""
    key, iv, pt, ct = (h(x) for x in CBC_CASES[1])
    enc, dec = pure.aes_cbc(key), pure.aes_cbc(key)
    assert enc._key is key and enc._ek is None and enc._dk is None
    assert enc.encrypt(iv, pt) == ct and enc._dk is None and len(enc._ek) == 88
    assert dec.decrypt(iv, ct) == pt and dec._ek is None and len(dec._dk) == 88
    assert pure.aes_cbc(bytes(32)).encrypt(iv, pt) and len(pure.aes_gcm(bytes(32))._rk) == 120


# RFC 8439 §2.8.2: (key, nonce, aad, plaintext, ciphertext || tag)
CHACHA_CASES = [
    ("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f", "070000004041424344454647",
     "50515253c0c1c2c3c4c5c6c7",
     "4c616469657320616e642047656e746c656d656e206f662074686520636c617373206f66202739393a204966204920"
     "636f756c64206f6666657220796f75206f6e6c79206f6e652074697020666f7220746865206675747572652c207375"
     "6e73637265656e20776f756c642062652069742e",
     "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d63dbea45e8ca9671282fafb69da9272"
     "8b1a71de0a9e060b2905d6a5b67ecd3b3692ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831"
     "d7bc3ff4def08e4b7a9de576d26586cec64b61161ae10b594f09e26a7e902ecbd0600691"),
]

# RFC 4868 §2.7.2.2 / §2.7.2.3 test case 1 (key 0x0b..., "Hi There"): (hash, key, data, truncated MAC)
HMAC_SHA2_CASES = [
    ("sha384", "0b" * 48, "4869205468657265", "b6a8d5636f5c6a7224f9977dcf7ee6c7fb6d0c48cbdee973"),
    ("sha512", "0b" * 64, "4869205468657265",
     "637edc6e01dce7e6742a99451aae82df23da3e92439e590e43e761b33e910fb8"),
]


def test_chacha20_poly1305_known_answers():
    for be in backends():
        for key, nonce, aad, pt, ct in CHACHA_CASES:
            c = be.chacha20_poly1305(h(key))
            assert c.encrypt(h(nonce), h(pt), h(aad)) == h(ct), be.NAME
            assert c.decrypt(h(nonce), h(ct), h(aad)) == h(pt), be.NAME
            bad = bytearray(h(ct))
            bad[3] ^= 0x40
            try:
                c.decrypt(h(nonce), bytes(bad), h(aad))
                raise AssertionError(be.NAME)
            except be.AuthError:
                pass


def test_hmac_sha384_512_known_answers_where_hashlib_has_them():
    for be in backends():
        for name, key, data, mac in HMAC_SHA2_CASES:
            if name in be.HASHES:
                got = be.hmac(name, h(key)).digest(h(data))
                assert got[:len(mac) // 2] == h(mac), (be.NAME, name)
