"""ChaCha20-Poly1305 (RFC 8439 §2.8) on small ints: the boards' ESP AEAD of RFC 7634. The pure and
the cryptolib backends share it (cryptolib has no ChaCha20), as they share gcm.py's GHASH.

Written for MicroPython's 31-bit small ints and a microcontroller's heap, like pure.py's AES:
- ChaCha20 (§2.3) keeps its sixteen 32-bit words as 16-bit halves in 32 locals (x0l, x0h, ...):
  an addition carries from the low half into the high one, a rotation by 16 swaps the halves and
  the others shift both (t << n | u >> 16 - n), so every value stays below 2^28. The eight
  quarter rounds of a double round are written out (a loop over an index table costs twice as
  much on MicroPython); the keystream is written with one struct.pack_into per block.
- Poly1305 (§2.5) works in radix 2^10: 13 limbs of 10 bits, 130 bits, so 2^130 = 5 (mod p) folds
  the top of a product back: d_k = sum_{i+j=k} h_i r_j + sum_{i+j=k+13} h_i 5r_j. A limb of h
  stays below 2^12.3 and 5r_j below 2^12.4, so a column of 13 products stays below 2^28: no heap
  int. In the AEAD every block Poly1305 sees is whole (the AAD and the ciphertext are padded to
  16 bytes, §2.8), so the 2^128 bit is always set.
- Nothing is allocated per block: the state and the limbs live in buffers of the AEAD object
  (one per SA), the keystream and a block's scratch in module buffers, the packet is encrypted
  in place.
- A message is worked on in slices (begin, then step(budget) until it says done), so a board can
  look at its link between them: one 1400-byte packet costs ~0.23 s on an RP2040 in Python, a
  slice of SLICE units ~16 ms. A unit is one Poly1305 block (~0.64 ms there); a ChaCha20 block
  with its 64 bytes of XOR is _CHACHA units (~7.5 ms there).
Checked against RFC 8439's test vectors (firmware/tests/test_crypto_kat.py) and, through the ESP
engine, against scapy's and OpenSSL's ChaCha20-Poly1305 (tests/test_esp_oracle.py).
"""
import struct
from array import array

from firmware.crypto import gcm
from firmware.crypto.hmac256 import equal_at

_pack_into = struct.pack_into
SLICE = 24                      # units of work per step() on the board (see the module docstring)
_CHACHA = 12                    # a ChaCha20 block and its XOR, in units
_TAGU = 3                       # the lengths block and the tag, in units
_KSB = 4                        # keystream blocks made per XOR call
_KS = bytearray(64 * _KSB)      # keystream: used within one step, never kept across steps
_OTK = bytearray(64)            # block 0: the Poly1305 one-time key (§2.6), used within begin
_PB = bytearray(16)             # a zero-padded last block; the lengths block
_TAG = bytearray(16)            # the tag computed by open: compared within the step that makes it
# what a message in progress does next
_XOR = 1                        # ChaCha20 over the data (seal: first; open: after the tag check)
_MAC = 2                        # Poly1305 over the ciphertext
_TAG_OUT = 3                    # seal: write the tag
_TAG_CHECK = 4                  # open: compare the tag


def _block(st, ks, koff):
    """ks[koff:koff + 64] = ChaCha20's block function of the state st (§2.3)."""
    x0l = st[0]
    x0h = st[1]
    x1l = st[2]
    x1h = st[3]
    x2l = st[4]
    x2h = st[5]
    x3l = st[6]
    x3h = st[7]
    x4l = st[8]
    x4h = st[9]
    x5l = st[10]
    x5h = st[11]
    x6l = st[12]
    x6h = st[13]
    x7l = st[14]
    x7h = st[15]
    x8l = st[16]
    x8h = st[17]
    x9l = st[18]
    x9h = st[19]
    x10l = st[20]
    x10h = st[21]
    x11l = st[22]
    x11h = st[23]
    x12l = st[24]
    x12h = st[25]
    x13l = st[26]
    x13h = st[27]
    x14l = st[28]
    x14h = st[29]
    x15l = st[30]
    x15h = st[31]
    for _ in range(10):
            # column round
            x0l += x4l
            x0h = (x0h + x4h + (x0l >> 16)) & 0xFFFF
            x0l &= 0xFFFF
            t = x12h ^ x0h
            x12h = x12l ^ x0l
            x12l = t
            x8l += x12l
            x8h = (x8h + x12h + (x8l >> 16)) & 0xFFFF
            x8l &= 0xFFFF
            t = x4h ^ x8h
            u = x4l ^ x8l
            x4h = ((t << 12) | (u >> 4)) & 0xFFFF
            x4l = ((u << 12) | (t >> 4)) & 0xFFFF
            x0l += x4l
            x0h = (x0h + x4h + (x0l >> 16)) & 0xFFFF
            x0l &= 0xFFFF
            t = x12h ^ x0h
            u = x12l ^ x0l
            x12h = ((t << 8) | (u >> 8)) & 0xFFFF
            x12l = ((u << 8) | (t >> 8)) & 0xFFFF
            x8l += x12l
            x8h = (x8h + x12h + (x8l >> 16)) & 0xFFFF
            x8l &= 0xFFFF
            t = x4h ^ x8h
            u = x4l ^ x8l
            x4h = ((t << 7) | (u >> 9)) & 0xFFFF
            x4l = ((u << 7) | (t >> 9)) & 0xFFFF
            x1l += x5l
            x1h = (x1h + x5h + (x1l >> 16)) & 0xFFFF
            x1l &= 0xFFFF
            t = x13h ^ x1h
            x13h = x13l ^ x1l
            x13l = t
            x9l += x13l
            x9h = (x9h + x13h + (x9l >> 16)) & 0xFFFF
            x9l &= 0xFFFF
            t = x5h ^ x9h
            u = x5l ^ x9l
            x5h = ((t << 12) | (u >> 4)) & 0xFFFF
            x5l = ((u << 12) | (t >> 4)) & 0xFFFF
            x1l += x5l
            x1h = (x1h + x5h + (x1l >> 16)) & 0xFFFF
            x1l &= 0xFFFF
            t = x13h ^ x1h
            u = x13l ^ x1l
            x13h = ((t << 8) | (u >> 8)) & 0xFFFF
            x13l = ((u << 8) | (t >> 8)) & 0xFFFF
            x9l += x13l
            x9h = (x9h + x13h + (x9l >> 16)) & 0xFFFF
            x9l &= 0xFFFF
            t = x5h ^ x9h
            u = x5l ^ x9l
            x5h = ((t << 7) | (u >> 9)) & 0xFFFF
            x5l = ((u << 7) | (t >> 9)) & 0xFFFF
            x2l += x6l
            x2h = (x2h + x6h + (x2l >> 16)) & 0xFFFF
            x2l &= 0xFFFF
            t = x14h ^ x2h
            x14h = x14l ^ x2l
            x14l = t
            x10l += x14l
            x10h = (x10h + x14h + (x10l >> 16)) & 0xFFFF
            x10l &= 0xFFFF
            t = x6h ^ x10h
            u = x6l ^ x10l
            x6h = ((t << 12) | (u >> 4)) & 0xFFFF
            x6l = ((u << 12) | (t >> 4)) & 0xFFFF
            x2l += x6l
            x2h = (x2h + x6h + (x2l >> 16)) & 0xFFFF
            x2l &= 0xFFFF
            t = x14h ^ x2h
            u = x14l ^ x2l
            x14h = ((t << 8) | (u >> 8)) & 0xFFFF
            x14l = ((u << 8) | (t >> 8)) & 0xFFFF
            x10l += x14l
            x10h = (x10h + x14h + (x10l >> 16)) & 0xFFFF
            x10l &= 0xFFFF
            t = x6h ^ x10h
            u = x6l ^ x10l
            x6h = ((t << 7) | (u >> 9)) & 0xFFFF
            x6l = ((u << 7) | (t >> 9)) & 0xFFFF
            x3l += x7l
            x3h = (x3h + x7h + (x3l >> 16)) & 0xFFFF
            x3l &= 0xFFFF
            t = x15h ^ x3h
            x15h = x15l ^ x3l
            x15l = t
            x11l += x15l
            x11h = (x11h + x15h + (x11l >> 16)) & 0xFFFF
            x11l &= 0xFFFF
            t = x7h ^ x11h
            u = x7l ^ x11l
            x7h = ((t << 12) | (u >> 4)) & 0xFFFF
            x7l = ((u << 12) | (t >> 4)) & 0xFFFF
            x3l += x7l
            x3h = (x3h + x7h + (x3l >> 16)) & 0xFFFF
            x3l &= 0xFFFF
            t = x15h ^ x3h
            u = x15l ^ x3l
            x15h = ((t << 8) | (u >> 8)) & 0xFFFF
            x15l = ((u << 8) | (t >> 8)) & 0xFFFF
            x11l += x15l
            x11h = (x11h + x15h + (x11l >> 16)) & 0xFFFF
            x11l &= 0xFFFF
            t = x7h ^ x11h
            u = x7l ^ x11l
            x7h = ((t << 7) | (u >> 9)) & 0xFFFF
            x7l = ((u << 7) | (t >> 9)) & 0xFFFF
            # diagonal round
            x0l += x5l
            x0h = (x0h + x5h + (x0l >> 16)) & 0xFFFF
            x0l &= 0xFFFF
            t = x15h ^ x0h
            x15h = x15l ^ x0l
            x15l = t
            x10l += x15l
            x10h = (x10h + x15h + (x10l >> 16)) & 0xFFFF
            x10l &= 0xFFFF
            t = x5h ^ x10h
            u = x5l ^ x10l
            x5h = ((t << 12) | (u >> 4)) & 0xFFFF
            x5l = ((u << 12) | (t >> 4)) & 0xFFFF
            x0l += x5l
            x0h = (x0h + x5h + (x0l >> 16)) & 0xFFFF
            x0l &= 0xFFFF
            t = x15h ^ x0h
            u = x15l ^ x0l
            x15h = ((t << 8) | (u >> 8)) & 0xFFFF
            x15l = ((u << 8) | (t >> 8)) & 0xFFFF
            x10l += x15l
            x10h = (x10h + x15h + (x10l >> 16)) & 0xFFFF
            x10l &= 0xFFFF
            t = x5h ^ x10h
            u = x5l ^ x10l
            x5h = ((t << 7) | (u >> 9)) & 0xFFFF
            x5l = ((u << 7) | (t >> 9)) & 0xFFFF
            x1l += x6l
            x1h = (x1h + x6h + (x1l >> 16)) & 0xFFFF
            x1l &= 0xFFFF
            t = x12h ^ x1h
            x12h = x12l ^ x1l
            x12l = t
            x11l += x12l
            x11h = (x11h + x12h + (x11l >> 16)) & 0xFFFF
            x11l &= 0xFFFF
            t = x6h ^ x11h
            u = x6l ^ x11l
            x6h = ((t << 12) | (u >> 4)) & 0xFFFF
            x6l = ((u << 12) | (t >> 4)) & 0xFFFF
            x1l += x6l
            x1h = (x1h + x6h + (x1l >> 16)) & 0xFFFF
            x1l &= 0xFFFF
            t = x12h ^ x1h
            u = x12l ^ x1l
            x12h = ((t << 8) | (u >> 8)) & 0xFFFF
            x12l = ((u << 8) | (t >> 8)) & 0xFFFF
            x11l += x12l
            x11h = (x11h + x12h + (x11l >> 16)) & 0xFFFF
            x11l &= 0xFFFF
            t = x6h ^ x11h
            u = x6l ^ x11l
            x6h = ((t << 7) | (u >> 9)) & 0xFFFF
            x6l = ((u << 7) | (t >> 9)) & 0xFFFF
            x2l += x7l
            x2h = (x2h + x7h + (x2l >> 16)) & 0xFFFF
            x2l &= 0xFFFF
            t = x13h ^ x2h
            x13h = x13l ^ x2l
            x13l = t
            x8l += x13l
            x8h = (x8h + x13h + (x8l >> 16)) & 0xFFFF
            x8l &= 0xFFFF
            t = x7h ^ x8h
            u = x7l ^ x8l
            x7h = ((t << 12) | (u >> 4)) & 0xFFFF
            x7l = ((u << 12) | (t >> 4)) & 0xFFFF
            x2l += x7l
            x2h = (x2h + x7h + (x2l >> 16)) & 0xFFFF
            x2l &= 0xFFFF
            t = x13h ^ x2h
            u = x13l ^ x2l
            x13h = ((t << 8) | (u >> 8)) & 0xFFFF
            x13l = ((u << 8) | (t >> 8)) & 0xFFFF
            x8l += x13l
            x8h = (x8h + x13h + (x8l >> 16)) & 0xFFFF
            x8l &= 0xFFFF
            t = x7h ^ x8h
            u = x7l ^ x8l
            x7h = ((t << 7) | (u >> 9)) & 0xFFFF
            x7l = ((u << 7) | (t >> 9)) & 0xFFFF
            x3l += x4l
            x3h = (x3h + x4h + (x3l >> 16)) & 0xFFFF
            x3l &= 0xFFFF
            t = x14h ^ x3h
            x14h = x14l ^ x3l
            x14l = t
            x9l += x14l
            x9h = (x9h + x14h + (x9l >> 16)) & 0xFFFF
            x9l &= 0xFFFF
            t = x4h ^ x9h
            u = x4l ^ x9l
            x4h = ((t << 12) | (u >> 4)) & 0xFFFF
            x4l = ((u << 12) | (t >> 4)) & 0xFFFF
            x3l += x4l
            x3h = (x3h + x4h + (x3l >> 16)) & 0xFFFF
            x3l &= 0xFFFF
            t = x14h ^ x3h
            u = x14l ^ x3l
            x14h = ((t << 8) | (u >> 8)) & 0xFFFF
            x14l = ((u << 8) | (t >> 8)) & 0xFFFF
            x9l += x14l
            x9h = (x9h + x14h + (x9l >> 16)) & 0xFFFF
            x9l &= 0xFFFF
            t = x4h ^ x9h
            u = x4l ^ x9l
            x4h = ((t << 7) | (u >> 9)) & 0xFFFF
            x4l = ((u << 7) | (t >> 9)) & 0xFFFF
    x0l += st[0]
    x0h = (x0h + st[1] + (x0l >> 16)) & 0xFFFF
    x0l &= 0xFFFF
    x1l += st[2]
    x1h = (x1h + st[3] + (x1l >> 16)) & 0xFFFF
    x1l &= 0xFFFF
    x2l += st[4]
    x2h = (x2h + st[5] + (x2l >> 16)) & 0xFFFF
    x2l &= 0xFFFF
    x3l += st[6]
    x3h = (x3h + st[7] + (x3l >> 16)) & 0xFFFF
    x3l &= 0xFFFF
    x4l += st[8]
    x4h = (x4h + st[9] + (x4l >> 16)) & 0xFFFF
    x4l &= 0xFFFF
    x5l += st[10]
    x5h = (x5h + st[11] + (x5l >> 16)) & 0xFFFF
    x5l &= 0xFFFF
    x6l += st[12]
    x6h = (x6h + st[13] + (x6l >> 16)) & 0xFFFF
    x6l &= 0xFFFF
    x7l += st[14]
    x7h = (x7h + st[15] + (x7l >> 16)) & 0xFFFF
    x7l &= 0xFFFF
    x8l += st[16]
    x8h = (x8h + st[17] + (x8l >> 16)) & 0xFFFF
    x8l &= 0xFFFF
    x9l += st[18]
    x9h = (x9h + st[19] + (x9l >> 16)) & 0xFFFF
    x9l &= 0xFFFF
    x10l += st[20]
    x10h = (x10h + st[21] + (x10l >> 16)) & 0xFFFF
    x10l &= 0xFFFF
    x11l += st[22]
    x11h = (x11h + st[23] + (x11l >> 16)) & 0xFFFF
    x11l &= 0xFFFF
    x12l += st[24]
    x12h = (x12h + st[25] + (x12l >> 16)) & 0xFFFF
    x12l &= 0xFFFF
    x13l += st[26]
    x13h = (x13h + st[27] + (x13l >> 16)) & 0xFFFF
    x13l &= 0xFFFF
    x14l += st[28]
    x14h = (x14h + st[29] + (x14l >> 16)) & 0xFFFF
    x14l &= 0xFFFF
    x15l += st[30]
    x15h = (x15h + st[31] + (x15l >> 16)) & 0xFFFF
    x15l &= 0xFFFF
    _pack_into("<32H", ks, koff, x0l, x0h, x1l, x1h, x2l, x2h, x3l, x3h, x4l, x4h, x5l, x5h, x6l, x6h, x7l, x7h,
               x8l, x8h, x9l, x9h, x10l, x10h, x11l, x11h, x12l, x12h, x13l, x13h, x14l, x14h, x15l, x15h)


def _state(st, key, nonce, counter):
    """The input block (§2.3): the constants, the 256-bit key, the block counter, the 96-bit nonce."""
    st[0] = 0x7865
    st[1] = 0x6170
    st[2] = 0x646E
    st[3] = 0x3320
    st[4] = 0x2D32
    st[5] = 0x7962
    st[6] = 0x6574
    st[7] = 0x6B20
    for i in range(8):
        st[8 + 2 * i] = key[4 * i] | key[4 * i + 1] << 8
        st[9 + 2 * i] = key[4 * i + 2] | key[4 * i + 3] << 8
    st[24] = counter & 0xFFFF
    st[25] = counter >> 16
    for i in range(3):
        st[26 + 2 * i] = nonce[4 * i] | nonce[4 * i + 1] << 8
        st[27 + 2 * i] = nonce[4 * i + 2] | nonce[4 * i + 3] << 8


def _keystream(st, blocks):
    """_KS[:64 * blocks] = ChaCha20's keystream from the state's counter on; the counter moves on."""
    ks = _KS
    for o in range(0, 64 * blocks, 64):
        _block(st, ks, o)
        c = st[24] + 1
        st[24] = c & 0xFFFF
        st[25] = (st[25] + (c >> 16)) & 0xFFFF


# ---- Poly1305 ----------------------------------------------------------------------------------
def poly_state():
    """Poly1305's state: the accumulator h (13 limbs of 10 bits, a little more), r's limbs then
    5 * r's limbs, and s (the second half of the one-time key)."""
    return array("H", bytes(26)), array("H", bytes(52)), bytearray(16)


def _poly_init(otk, h, rs, sk):
    """r (clamped, §2.5) and s from the one-time key; the accumulator to 0."""
    b0 = otk[0]
    b1 = otk[1]
    b2 = otk[2]
    b3 = otk[3] & 15
    b4 = otk[4] & 252
    b5 = otk[5]
    b6 = otk[6]
    b7 = otk[7] & 15
    b8 = otk[8] & 252
    b9 = otk[9]
    b10 = otk[10]
    b11 = otk[11] & 15
    b12 = otk[12] & 252
    b13 = otk[13]
    b14 = otk[14]
    b15 = otk[15] & 15
    rs[0] = b0 | (b1 & 3) << 8
    rs[1] = b1 >> 2 | (b2 & 15) << 6
    rs[2] = b2 >> 4 | (b3 & 63) << 4
    rs[3] = b3 >> 6 | b4 << 2
    rs[4] = b5 | (b6 & 3) << 8
    rs[5] = b6 >> 2 | (b7 & 15) << 6
    rs[6] = b7 >> 4 | (b8 & 63) << 4
    rs[7] = b8 >> 6 | b9 << 2
    rs[8] = b10 | (b11 & 3) << 8
    rs[9] = b11 >> 2 | (b12 & 15) << 6
    rs[10] = b12 >> 4 | (b13 & 63) << 4
    rs[11] = b13 >> 6 | b14 << 2
    rs[12] = b15
    for i in range(13):
        rs[13 + i] = 5 * rs[i]
        h[i] = 0
    for i in range(16):
        sk[i] = otk[16 + i]


def _poly_blocks(h, rs, data, off, end):
    """Fold the whole 16-byte blocks data[off:end] into the accumulator: h = (h + m) * r mod p,
    partly reduced (§2.5.1)."""
    h0 = h[0]
    h1 = h[1]
    h2 = h[2]
    h3 = h[3]
    h4 = h[4]
    h5 = h[5]
    h6 = h[6]
    h7 = h[7]
    h8 = h[8]
    h9 = h[9]
    h10 = h[10]
    h11 = h[11]
    h12 = h[12]
    r0 = rs[0]
    r1 = rs[1]
    r2 = rs[2]
    r3 = rs[3]
    r4 = rs[4]
    r5 = rs[5]
    r6 = rs[6]
    r7 = rs[7]
    r8 = rs[8]
    r9 = rs[9]
    r10 = rs[10]
    r11 = rs[11]
    r12 = rs[12]
    s1 = rs[14]
    s2 = rs[15]
    s3 = rs[16]
    s4 = rs[17]
    s5 = rs[18]
    s6 = rs[19]
    s7 = rs[20]
    s8 = rs[21]
    s9 = rs[22]
    s10 = rs[23]
    s11 = rs[24]
    s12 = rs[25]
    while off < end:
        # the block as 13 limbs (little-endian, five bytes make four limbs) and its 2^128 bit
        b = data[off + 1]
        h0 += data[off] | (b & 3) << 8
        c = data[off + 2]
        h1 += b >> 2 | (c & 15) << 6
        b = data[off + 3]
        h2 += c >> 4 | (b & 63) << 4
        h3 += b >> 6 | data[off + 4] << 2
        b = data[off + 6]
        h4 += data[off + 5] | (b & 3) << 8
        c = data[off + 7]
        h5 += b >> 2 | (c & 15) << 6
        b = data[off + 8]
        h6 += c >> 4 | (b & 63) << 4
        h7 += b >> 6 | data[off + 9] << 2
        b = data[off + 11]
        h8 += data[off + 10] | (b & 3) << 8
        c = data[off + 12]
        h9 += b >> 2 | (c & 15) << 6
        b = data[off + 13]
        h10 += c >> 4 | (b & 63) << 4
        h11 += b >> 6 | data[off + 14] << 2
        h12 += data[off + 15] | 256
        off += 16
        d0 = (h0 * r0 + h1 * s12 + h2 * s11 + h3 * s10 + h4 * s9 + h5 * s8 + h6 * s7 +
                      h7 * s6 + h8 * s5 + h9 * s4 + h10 * s3 + h11 * s2 + h12 * s1)
        d1 = (h0 * r1 + h1 * r0 + h2 * s12 + h3 * s11 + h4 * s10 + h5 * s9 + h6 * s8 +
                      h7 * s7 + h8 * s6 + h9 * s5 + h10 * s4 + h11 * s3 + h12 * s2)
        d2 = (h0 * r2 + h1 * r1 + h2 * r0 + h3 * s12 + h4 * s11 + h5 * s10 + h6 * s9 +
                      h7 * s8 + h8 * s7 + h9 * s6 + h10 * s5 + h11 * s4 + h12 * s3)
        d3 = (h0 * r3 + h1 * r2 + h2 * r1 + h3 * r0 + h4 * s12 + h5 * s11 + h6 * s10 +
                      h7 * s9 + h8 * s8 + h9 * s7 + h10 * s6 + h11 * s5 + h12 * s4)
        d4 = (h0 * r4 + h1 * r3 + h2 * r2 + h3 * r1 + h4 * r0 + h5 * s12 + h6 * s11 +
                      h7 * s10 + h8 * s9 + h9 * s8 + h10 * s7 + h11 * s6 + h12 * s5)
        d5 = (h0 * r5 + h1 * r4 + h2 * r3 + h3 * r2 + h4 * r1 + h5 * r0 + h6 * s12 +
                      h7 * s11 + h8 * s10 + h9 * s9 + h10 * s8 + h11 * s7 + h12 * s6)
        d6 = (h0 * r6 + h1 * r5 + h2 * r4 + h3 * r3 + h4 * r2 + h5 * r1 + h6 * r0 +
                      h7 * s12 + h8 * s11 + h9 * s10 + h10 * s9 + h11 * s8 + h12 * s7)
        d7 = (h0 * r7 + h1 * r6 + h2 * r5 + h3 * r4 + h4 * r3 + h5 * r2 + h6 * r1 +
                      h7 * r0 + h8 * s12 + h9 * s11 + h10 * s10 + h11 * s9 + h12 * s8)
        d8 = (h0 * r8 + h1 * r7 + h2 * r6 + h3 * r5 + h4 * r4 + h5 * r3 + h6 * r2 +
                      h7 * r1 + h8 * r0 + h9 * s12 + h10 * s11 + h11 * s10 + h12 * s9)
        d9 = (h0 * r9 + h1 * r8 + h2 * r7 + h3 * r6 + h4 * r5 + h5 * r4 + h6 * r3 +
                      h7 * r2 + h8 * r1 + h9 * r0 + h10 * s12 + h11 * s11 + h12 * s10)
        d10 = (h0 * r10 + h1 * r9 + h2 * r8 + h3 * r7 + h4 * r6 + h5 * r5 + h6 * r4 +
                      h7 * r3 + h8 * r2 + h9 * r1 + h10 * r0 + h11 * s12 + h12 * s11)
        d11 = (h0 * r11 + h1 * r10 + h2 * r9 + h3 * r8 + h4 * r7 + h5 * r6 + h6 * r5 +
                      h7 * r4 + h8 * r3 + h9 * r2 + h10 * r1 + h11 * r0 + h12 * s12)
        d12 = (h0 * r12 + h1 * r11 + h2 * r10 + h3 * r9 + h4 * r8 + h5 * r7 + h6 * r6 +
                      h7 * r5 + h8 * r4 + h9 * r3 + h10 * r2 + h11 * r1 + h12 * r0)
        d1 += d0 >> 10
        h0 = d0 & 1023
        d2 += d1 >> 10
        h1 = d1 & 1023
        d3 += d2 >> 10
        h2 = d2 & 1023
        d4 += d3 >> 10
        h3 = d3 & 1023
        d5 += d4 >> 10
        h4 = d4 & 1023
        d6 += d5 >> 10
        h5 = d5 & 1023
        d7 += d6 >> 10
        h6 = d6 & 1023
        d8 += d7 >> 10
        h7 = d7 & 1023
        d9 += d8 >> 10
        h8 = d8 & 1023
        d10 += d9 >> 10
        h9 = d9 & 1023
        d11 += d10 >> 10
        h10 = d10 & 1023
        d12 += d11 >> 10
        h11 = d11 & 1023
        h12 = d12 & 1023
        h0 += (d12 >> 10) * 5           # 2^130 = 5 (mod 2^130 - 5)
        h1 += h0 >> 10
        h0 &= 1023
    h[0] = h0
    h[1] = h1
    h[2] = h2
    h[3] = h3
    h[4] = h4
    h[5] = h5
    h[6] = h6
    h[7] = h7
    h[8] = h8
    h[9] = h9
    h[10] = h10
    h[11] = h11
    h[12] = h12


def _poly_update(h, rs, data, off, end):
    """Fold data[off:end] in, zero-padded to whole blocks (§2.8: AAD and ciphertext each are)."""
    full = off + ((end - off) & ~15)
    if full > off:
        _poly_blocks(h, rs, data, off, full)
    if full < end:
        p = _PB
        for i in range(16):
            p[i] = data[full + i] if full + i < end else 0
        _poly_blocks(h, rs, p, 0, 16)


def _poly_finish(h, rs, sk, alen, clen, out, ooff):
    """Fold in the lengths block (§2.8) and write the tag to out[ooff:ooff + 16]."""
    _pack_into("<IIII", _PB, 0, alen, 0, clen, 0)
    _poly_blocks(h, rs, _PB, 0, 16)
    _poly_tag(h, rs, sk, out, ooff)


def _poly_tag(h, rs, sk, out, ooff):
    """Write (h mod p) + s mod 2^128, little-endian, to out[ooff:ooff + 16] (§2.5.1)."""
    for _ in range(2):                  # carry fully: every limb below 2^10
        c = 0
        for i in range(13):
            v = h[i] + c
            h[i] = v & 1023
            c = v >> 10
        h[0] += 5 * c
    # h - p = h + 5 - 2^130: use it if it is not negative (h may lie in [p, 2^130))
    c = 5
    for i in range(13):
        v = h[i] + c
        c = v >> 10
        rs[i] = v & 1023                # r is no longer needed
    g = rs if c else h
    v = nbits = c = 0
    i = 0
    for k in range(16):
        while nbits < 8:
            v += g[i] << nbits
            nbits += 10
            i += 1
        t = (v & 255) + sk[k] + c
        out[ooff + k] = t & 255
        c = t >> 8
        v >>= 8
        nbits -= 8


# ---- the AEAD ------------------------------------------------------------------------------------
class ChaChaPoly:
    """AEAD_CHACHA20_POLY1305 (RFC 8439 §2.8): a 32-byte key, 12-byte nonces, 16-byte tags.
    seal_into/open_into work on the caller's buffers (the ESP engine's path: nothing allocated per
    block); seal_begin/open_begin then step() do the same in slices, one message at a time per
    object; encrypt/decrypt have the call shape of cryptography's ChaCha20Poly1305. ``error`` is
    the backend's AuthError."""

    def __init__(self, key, error):
        if len(key) != 32:
            raise ValueError("ChaCha20-Poly1305 key must be 32 bytes")
        self._key = key if type(key) in (bytes, bytearray) else bytes(key)   # no copy: see pure.check_key
        self._error = error
        self._st = array("H", bytes(64))    # the block function's input: 16 words as (low, high) halves
        self._h, self._rs, self._sk = poly_state()
        self._ph = 0                        # what the message in progress does next (0: none)
        self._sealing = False
        self._src = self._dst = None
        self._off = self._end = self._pos = self._doff = self._alen = 0

    def _begin(self, nonce, aad, src, off, end, dst, doff, phase):
        """The one-time Poly1305 key from block 0 (§2.6), the AAD folded in; the keystream then
        runs from block 1."""
        if len(nonce) != 12:
            raise ValueError("ChaCha20-Poly1305 nonce must be 12 bytes")
        st = self._st
        _state(st, self._key, nonce, 0)
        _block(st, _OTK, 0)
        _poly_init(_OTK, self._h, self._rs, self._sk)
        st[24] = 1
        _poly_update(self._h, self._rs, aad, 0, len(aad))
        self._alen = len(aad)
        self._src = src
        self._dst = dst
        self._off = self._pos = off
        self._end = end
        self._doff = doff
        self._sealing = phase == _XOR
        self._ph = phase

    def seal_begin(self, nonce, aad, buf, off, end):
        """Begin to encrypt buf[off:end] in place, the tag to go to buf[end:end + 16]; step()
        does the work."""
        self._begin(nonce, aad, buf, off, end, buf, off, _XOR)

    def open_begin(self, nonce, aad, src, off, end, dst, doff):
        """Begin to check the tag src[end:end + 16] over src[off:end], then to decrypt src[off:end]
        into dst[doff:]; step() does the work."""
        if end + 16 > len(src) or end < off:
            raise self._error("ChaCha20-Poly1305 input shorter than its tag")
        self._begin(nonce, aad, src, off, end, dst, doff, _MAC)

    def step(self, budget=None):
        """Work on the message begun for about `budget` units (None: to its end; at least one
        block's worth). True when it is done; open: the backend's AuthError (nothing written) when
        the tag is wrong."""
        if budget is None:
            budget = 1 << 29
        src, off, end = self._src, self._off, self._end
        while self._ph:
            if budget <= 0:
                return False
            ph = self._ph
            pos = self._pos
            if ph == _XOR:
                blocks = min((end - pos + 63) >> 6, _KSB, max(1, budget // _CHACHA))
                _keystream(self._st, blocks)
                n = min(end - pos, 64 * blocks)
                gcm.xor_into(self._dst, self._doff + pos - off, src, pos, _KS, 0, n)
                budget -= blocks * _CHACHA
                pos += n
                if pos >= end:
                    pos = off
                    ph = _MAC if self._sealing else 0         # seal: MAC the ciphertext next
            elif ph == _MAC:
                stop = min(end, pos + 16 * budget)
                _poly_update(self._h, self._rs, src, pos, stop)
                budget -= (stop - pos + 15) >> 4
                pos = stop
                if pos >= end:
                    ph = _TAG_OUT if self._sealing else _TAG_CHECK
            else:
                budget -= _TAGU
                if ph == _TAG_OUT:
                    _poly_finish(self._h, self._rs, self._sk, self._alen, end - off, src, end)
                    ph = 0
                else:
                    _poly_finish(self._h, self._rs, self._sk, self._alen, end - off, _TAG, 0)
                    if not equal_at(_TAG, src, end, 16):
                        self._ph = 0
                        self._src = self._dst = None
                        raise self._error("ChaCha20-Poly1305 tag mismatch")
                    ph = _XOR
                    pos = off
            self._pos = pos
            self._ph = ph
        self._src = self._dst = None
        return True

    def step_slice(self):
        """step() for a slice's worth (SLICE units, read at each call)."""
        return self.step(SLICE)

    def seal_into(self, nonce, aad, buf, off, end):
        """Encrypt buf[off:end] in place and write the tag to buf[end:end + 16]."""
        self.seal_begin(nonce, aad, buf, off, end)
        self.step()

    def open_into(self, nonce, aad, src, off, end, dst, doff):
        """Check the tag src[end:end + 16] over src[off:end], then decrypt src[off:end] into
        dst[doff:]. The backend's AuthError (nothing written) if the tag is wrong."""
        self.open_begin(nonce, aad, src, off, end, dst, doff)
        self.step()

    def encrypt(self, nonce, data, aad):
        n = len(data)
        buf = bytearray(n + 16)
        buf[0:n] = data
        self.seal_into(nonce, aad or b"", buf, 0, n)
        return bytes(buf)

    def decrypt(self, nonce, data, aad):
        n = len(data) - 16
        if n < 0:
            raise self._error("ChaCha20-Poly1305 input shorter than its tag")
        out = bytearray(n)
        self.open_into(nonce, aad or b"", data, 0, n, out, 0)
        return bytes(out)

    def wipe(self):
        """Forget the key: zero what was derived from it (the key is the caller's to zero), and
        any message in progress."""
        self._ph = 0
        self._src = self._dst = None
        for buf in (self._st, self._h, self._rs, self._sk, _OTK, _KS, _PB, _TAG):
            for i in range(len(buf)):
                buf[i] = 0

    def __repr__(self):
        return "ChaChaPoly(<key hidden>)"
