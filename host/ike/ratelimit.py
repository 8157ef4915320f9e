"""Token buckets: RFC 7296 §2.4/§2.21 require rate limits on every action taken because of an
unprotected message (error answers to IKE_SA_INIT, cookies, INVALID_SPI handling)."""
from __future__ import annotations


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` stored. Time comes from the caller."""
    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float):
        self.rate, self.burst = float(rate), float(burst)
        self.tokens, self.stamp = float(burst), None

    def take(self, now: float, n: float = 1.0) -> bool:
        if self.stamp is not None and now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now if self.stamp is None else max(self.stamp, now)
        if self.tokens >= n:
            self.tokens -= n
            return True
        return False


class KeyedBuckets:
    """One bucket per key (e.g. per source address) plus a global one; the per-key table is
    bounded (oldest entries dropped) so spoofed sources cannot grow it without limit."""

    def __init__(self, rate: float, burst: float, global_rate: float, global_burst: float,
                 max_keys: int = 4096):
        self.rate, self.burst, self.max_keys = rate, burst, max_keys
        self.global_ = TokenBucket(global_rate, global_burst)
        self.keys: dict = {}

    def take(self, key, now: float) -> bool:
        b = self.keys.get(key)
        if b is None:
            if len(self.keys) >= self.max_keys:
                self.keys.pop(next(iter(self.keys)))
            b = self.keys[key] = TokenBucket(self.rate, self.burst)
        if not b.take(now):
            return False
        return self.global_.take(now)
