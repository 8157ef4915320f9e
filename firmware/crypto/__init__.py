"""Crypto backends for the ESP engine: one interface, three implementations, chosen at start.

    be = crypto.load()             # best available: cryptography, then cryptolib, then pure
    be = crypto.load("pure")       # or a given one (tests make the choice explicit)

A backend is a module with:

    NAME                 "cryptography" | "cryptolib" | "pure"
    IN_PLACE             True if aes_gcm objects also have seal_into/open_into (below): the ESP
                         engine then works in its own buffers (MicroPython: nothing allocated
                         per block); False: it uses encrypt/decrypt (CPython: no wrapper)
    speed(encr)          messages.SPEED_FAST / SPEED_SLOW for an IKEv2 ENCR transform id
    AuthError            raised by an AEAD's decrypt() when the tag does not verify
    aes_gcm(key)         AEAD (RFC 5116 / NIST SP 800-38D) with a 16-byte tag:
                           .encrypt(nonce12, plaintext, aad) -> ciphertext || tag
                           .decrypt(nonce12, ciphertext || tag, aad) -> plaintext  (or AuthError)
                         the same call shape as cryptography's AESGCM, so the CPython path adds
                         no wrapper; with IN_PLACE also
                           .seal_into(nonce12, aad, buf, off, end): buf[off:end] encrypted in
                                place, the tag written to buf[end:end + 16]
                           .open_into(nonce12, aad, src, off, end, dst, doff): the tag
                                src[end:end + 16] checked (AuthError), src[off:end] decrypted
                                into dst[doff:]
                           .wipe(): key material zeroed (what Python can reach)
    aes_cbc(key)         .encrypt(iv16, data) / .decrypt(iv16, data); len(data) % 16 == 0, no padding
                         .encrypt_into(buf, off, end): CBC in place under a zero IV
                         .decrypt_into(buf, off, end): in place; buf[off + 16:end] becomes the
                                plaintext under the IV buf[off:off + 16] (the first block: unspecified)
                         .wipe()
    chacha20_poly1305(key)  ChaCha20-Poly1305 (RFC 8439 §2.8; 32-byte key), the same interface as
                         aes_gcm (with IN_PLACE: seal_into/open_into/wipe)
    HASHES               the hash names hmac() takes here: "sha256", and "sha384" / "sha512"
                         where hashlib has them (CPython; not stock MicroPython)
    hmac(name, key)      HMAC with that hash, as hmac_sha256 below; ValueError if it is missing
    hmac_sha256(key)     .digest(data, tail=b"") -> 32 bytes of HMAC-SHA-256(key, data || tail)
                         (RFC 2104; `tail` lets ESN append seq-hi without a copy, RFC 4303 §3.3.2.1)
                         .digest_into(buf, off, end, tail, out, ooff, n): its first n bytes over
                                buf[off:end] || tail, into out[ooff:ooff + n]
                         .wipe()
    ct_equal(a, b)       constant-time comparison of two byte strings

No backend supplies random bytes: CBC IVs are derived from the key and the sequence number
(firmware/esp.py), on every runtime.

Key sizes: AES 16 and 32 bytes (24 works in every backend but is not advertised).
Inputs may be bytes, bytearray or memoryview; outputs are bytes. Keys are kept by reference
(bytes or bytearray, not copied): the SA that owns them zeroes them when it is deleted.
"""

ORDER = ("cryptography", "cryptolib", "pure")


def load(name=None):
    """The named backend, or the first of ORDER this runtime can import."""
    names = (name,) if name else ORDER
    last = None
    for n in names:
        try:
            if n == "cryptography":
                # on a board this raises ImportError and the next backend is tried
                from firmware.crypto import cryptography_backend as be  # mpy-ok
            elif n == "cryptolib":
                from firmware.crypto import cryptolib_backend as be
            elif n == "pure":
                from firmware.crypto import pure as be
            else:
                raise ValueError("unknown crypto backend %r" % n)
            return be
        except ImportError as e:
            last = e
    raise ImportError("no crypto backend among %s: %s" % (names, last))


def available():
    """Names of the backends this runtime can load."""
    out = []
    for n in ORDER:
        try:
            load(n)
            out.append(n)
        except ImportError:
            pass
    return out
