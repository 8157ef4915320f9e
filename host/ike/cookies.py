"""Stateless cookies for the IKE_SA_INIT responder (RFC 7296 §2.6).

When too many half-open IKE SAs exist — ``cookie_threshold`` in total (strongSwan's default is
30) or ``cookie_threshold_ip`` from one address — an IKE_SA_INIT request without a valid cookie
gets only N(COOKIE) back and leaves no state and costs no Diffie-Hellman. A cookie is

    Cookie = <VersionIDofSecret> | HMAC-SHA256(<secret>, Ni | IPi | SPIi)

(§2.6 suggests the hash of the same fields with the secret appended; the keyed HMAC is the
same construction done properly). The secret is random and replaced every
``cookie_secret_lifetime`` seconds; cookies made with the previous secret still verify, so an
initiator caught by the change is not turned away. COOKIE answers are rate-limited per source and
in total like every answer to an unprotected message (§2.4), with their own buckets: they are
small, cheap and never amplify — a COOKIE goes only to a request that carries SA, KE and Nonce
(§2.6: the request it answers), which is longer than the answer; one without them is answered
INVALID_SYNTAX by the exchange, a shorter message — so a flood of spoofed requests cannot starve a
real initiator nor make us a reflector.
"""
from __future__ import annotations

import hmac
import os
import struct
from hashlib import sha256

from .constants import ExchangeType, Flag, Notify, PayloadType
from .ike_init import ZERO_SPI, pack_ip
from .message import Message
from .payloads import NotifyPayload

_VER = struct.Struct("!I")
COOKIE_LEN = _VER.size + 32


class CookieJar:
    """Makes and checks cookies; ``lifetime`` seconds per secret, time from the caller."""

    def __init__(self, lifetime: float = 60.0):
        self.lifetime = float(lifetime)
        self.version = 0
        self.current = os.urandom(32)
        self.previous = None
        self.since = None

    def _rotate(self, now: float):
        if self.since is None:
            self.since = now
        elif now - self.since >= self.lifetime:
            self.previous, self.current = (self.version, self.current), os.urandom(32)
            self.version = (self.version + 1) & 0xFFFFFFFF
            self.since = now

    @staticmethod
    def _mac(secret: bytes, ni: bytes, ip: str, spi_i: bytes) -> bytes:
        return hmac.new(secret, ni + pack_ip(ip) + spi_i, sha256).digest()

    def make(self, ni: bytes, ip: str, spi_i: bytes, now: float) -> bytes:
        self._rotate(now)
        return _VER.pack(self.version) + self._mac(self.current, ni, ip, spi_i)

    def check(self, cookie: bytes, ni: bytes, ip: str, spi_i: bytes, now: float) -> bool:
        self._rotate(now)
        if len(cookie) != COOKIE_LEN:
            return False
        (ver,) = _VER.unpack_from(cookie)
        if ver == self.version:
            secret = self.current
        elif self.previous is not None and ver == self.previous[0]:
            secret = self.previous[1]
        else:
            return False
        return hmac.compare_digest(cookie[_VER.size:], self._mac(secret, ni, ip, spi_i))


def demanded(ctx, ip: str) -> bool:
    """Are half-open SAs past a threshold (in total, or from ``ip``)?"""
    s = ctx.settings
    return bool((s.cookie_threshold and ctx.half_open_count() >= s.cookie_threshold) or
                (s.cookie_threshold_ip and ctx.half_open_from(ip) >= s.cookie_threshold_ip))


def admit(ctx, hdr, msg, addr, local, now: float) -> bool:
    """A well-formed IKE_SA_INIT request: True to go on, False after answering with a COOKIE (or
    dropping the request when COOKIE answers are rate-limited). The half-open limits apply in
    any case."""
    ip = addr[0]
    if not demanded(ctx, ip):
        return True
    nonce = msg.get(PayloadType.NONCE)
    if nonce is None or msg.get(PayloadType.SA) is None or msg.get(PayloadType.KE) is None:
        return True                         # answered with INVALID_SYNTAX, statelessly
    got = msg.notify(Notify.COOKIE)
    if got is not None:
        if ctx.cookies.check(got.data, nonce.data, ip, hdr.spi_i, now):
            ctx.stats["cookies_accepted"] += 1
            return True
        ctx.stats["cookies_invalid"] += 1
    if not ctx.limits.cookie_replies.take(ip, now):
        ctx.stats["cookie_replies_rate_limited"] += 1
        return False
    cookie = ctx.cookies.make(nonce.data, ip, hdr.spi_i, now)
    out = Message(hdr.spi_i, ZERO_SPI, ExchangeType.IKE_SA_INIT, Flag.RESPONSE, 0,
                  [NotifyPayload(Notify.COOKIE, cookie)])
    ctx.stats["cookies_sent"] += 1
    ctx.send(out.encode(), addr, local)
    return False
