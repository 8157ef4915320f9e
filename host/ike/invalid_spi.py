"""INVALID_SPI, sent and honoured (RFC 7296 §1.5, §2.4, §2.21, §3.10.1).

Sending — the board saw ESP for an SPI it does not have (typically after it lost its SAs):

* An IKE SA with the packet's source address exists: N(INVALID_SPI) with the SPI as notification
  data, protected, in an INFORMATIONAL exchange of that IKE SA (§1.5). SPIs reported before the
  message goes out share it.
* None exists and ``unprotected_invalid_spi`` is on: an INFORMATIONAL outside any IKE SA (§1.5):
  random initiator SPI, zero responder SPI, Initiator flag set, Response flag clear, Message ID 0,
  N(INVALID_SPI) in clear, sent to the packet's source address and port. Never retransmitted,
  never answered, no state kept.
* Both are rate-limited per source address and in total (token buckets): an ESP packet with an
  unknown SPI is unauthenticated (§2.4 "MUST limit the rate at which they take actions based on
  unprotected messages"). An ESP packet never creates an IKE SA.

Receiving:

* Unprotected: a hint that "should only be used ... as a hint that something might be wrong
  (because it could easily be forged)" (§1.5), and never answered (no message loops). No state
  changes; when it names the SPI of one of our Child SAs with that peer, a liveness check runs on
  the hint schedule at once: a new one when no request of ours is in flight, else the request in
  flight (any request is a check, §2.4) is sent again now and its remaining retransmissions move to
  the hint schedule when that ends sooner — rate-limited per source and in total, once per
  request, at most one check in flight per IKE SA. A peer that lost its state does not answer,
  and the ordinary teardown follows (liveness.py); a live one answers and nothing happens.
* Protected: the peer no longer has the Child SA that SPI belongs to. It is removed here, the peer
  is told to delete any half it still holds, and the Child SA is created anew (as §2.25 says for
  CHILD_SA_NOT_FOUND).

INVALID_IKE_SPI (§2.21.4), the same rule one level up:

* Sent: a protected request for an IKE SA we do not have (typically: we restarted, the peer's
  liveness check arrives) is answered, if ``invalid_ike_spi`` is on, with an unprotected response
  carrying the same SPIs, exchange type and Message ID and N(INVALID_IKE_SPI) — rate-limited per
  source and in total (the ``invalid_spi_*`` rates), never larger than the request. Responses and
  unprotected messages are never answered (no loops, nothing for a spoofer to reflect).
* Received, as the unprotected answer to one of our requests: "MUST NOT respond and MUST NOT
  change the state of any existing SAs", but it is a hint that should start a liveness check. The
  request in flight is that check, so its remaining retransmissions move to the hint schedule when
  that ends sooner (rate-limited, once per request). A live peer answers it; a peer that lost its
  state does not, and the ordinary teardown (and ``dpd_action``) follows sooner.

The hint schedule (``hint_retransmit``; the daemon's default in host/config.py) may be short: a
hint only makes us ask, and a live peer answers within one round trip. Whoever can forge an
INVALID_IKE_SPI answer saw our request, so is on the path, and can as well drop the genuine
replies and have the IKE SA torn down on any schedule; a fast one gives him nothing new. An
INVALID_SPI needs the SPI of one of our Child SAs, which only the path sees, too. Its
retransmissions still grow exponentially (§2.4), and the hint rate bounds how often a forger
can make us ask.
"""
from __future__ import annotations

import os

from . import liveness
from .constants import ExchangeType, Flag, Notify
from .informational import InformationalTask
from .message import Message, parse_plain
from .payloads import NotifyPayload, SyntaxError_, UnsupportedCritical
from .states import ChildSaState, IkeSaState
from .task import Outcome

_INFO = int(ExchangeType.INFORMATIONAL)
ZERO_SPI = b"\0" * 8
MAX_SPIS_PER_MESSAGE = 8
MAX_HINTS_PER_MESSAGE = 4


class InvalidSpiTask(InformationalTask):
    """Protected INFORMATIONAL carrying N(INVALID_SPI) for each SPI (§1.5, §3.10.1)."""

    def __init__(self, spis):
        self.spis = list(spis)
        self.sent = False

    def build(self, sa, now):
        self.sent = True
        if sa.invalid_spi_task is self:
            sa.invalid_spi_task = None
        return [NotifyPayload(Notify.INVALID_SPI, s.to_bytes(4, "big")) for s in self.spis]

    def on_response(self, sa, msg, raw, now) -> Outcome:
        return Outcome.DONE


def report(ctx, spi: int, src, now: float, local=None) -> str | None:
    """The board saw ESP for ``spi`` from ``src`` = (ip, port). Returns "protected",
    "unprotected" or None (nothing sent: rate limit, feature off, bad input)."""
    st = ctx.stats
    st["esp_unknown_spi"] += 1
    if src is None or not 256 <= spi <= 0xFFFFFFFF:
        st["esp_unknown_spi_ignored"] += 1
        return None
    ip = src[0]
    sas = [sa for sa in ctx.ike_sas_with_peer(ip)
           if sa.state == IkeSaState.ESTABLISHED and sa.successor is None and sa.announced]
    if not sas and not ctx.settings.unprotected_invalid_spi:
        st["esp_unknown_spi_no_ike_sa"] += 1
        return None
    if not ctx.limits.invalid_spi_out.take(ip, now):
        st["invalid_spi_rate_limited"] += 1
        return None
    if sas:
        # several peers behind one NAT share the address: the one at that port first, then the newest
        sa = max(sas, key=lambda s: (tuple(s.remote) == tuple(src), s.established_at, s.ike_id))
        task = sa.invalid_spi_task
        if task is None:
            task = sa.invalid_spi_task = InvalidSpiTask([spi])
            sa.add_task(task, now)
        elif spi in task.spis or len(task.spis) >= MAX_SPIS_PER_MESSAGE:
            st["invalid_spi_coalesced"] += 1        # one notification waiting per IKE SA, bounded
            return None
        else:
            task.spis.append(spi)
        st["invalid_spi_sent_protected"] += 1
        return "protected"
    if local is None:
        local = (ctx.settings.local_addr or "0.0.0.0", ctx.settings.natt_port)
    msg = Message(os.urandom(8), ZERO_SPI, _INFO, Flag.INITIATOR, 0,
                  [NotifyPayload(Notify.INVALID_SPI, spi.to_bytes(4, "big"))])
    ctx.send(msg.encode(), (src[0], src[1]), local)
    st["invalid_spi_sent_unprotected"] += 1
    return "unprotected"


def unknown_ike_sa(ctx, hdr, data: bytes, addr, local, now: float):
    """A message (not IKE_SA_INIT) for an IKE SA we do not have. A protected request gets
    N(INVALID_IKE_SPI) (§2.21.4); an unprotected INFORMATIONAL may be an INVALID_SPI hint (§1.5);
    nothing else is answered, and no response ever is."""
    st = ctx.stats
    if hdr.flags & Flag.RESPONSE:
        st["unknown_spi"] += 1          # §2.21.4: "MUST NOT respond"
        return
    payloads, sk = parse_plain(hdr, data)
    if sk is None:
        if hdr.exchange == _INFO:
            unprotected_received(ctx, hdr, payloads, addr, now)
        else:
            st["unknown_spi"] += 1
        return
    st["unknown_spi"] += 1
    if not ctx.settings.invalid_ike_spi or hdr.spi_r == ZERO_SPI:
        return
    if not ctx.limits.invalid_ike_spi_out.take(addr[0], now):
        st["invalid_ike_spi_rate_limited"] += 1
        return
    flags = Flag.RESPONSE | (0 if hdr.flags & Flag.INITIATOR else Flag.INITIATOR)
    msg = Message(hdr.spi_i, hdr.spi_r, hdr.exchange, flags, hdr.mid,
                  [NotifyPayload(Notify.INVALID_IKE_SPI, b"")])
    ctx.send(msg.encode(), (addr[0], addr[1]), local)
    st["invalid_ike_spi_sent"] += 1


def ike_spi_hint(sa, hdr, data: bytes, addr, now: float) -> bool:
    """An unprotected message that matches our request in flight (SPIs, exchange, Message ID).
    If it is N(INVALID_IKE_SPI) (§2.21.4): a hint, acted on at most once per request and at the
    hint rate, never a state change. Returns whether it was one (else the caller counts it)."""
    ctx, st = sa.ctx, sa.ctx.stats
    try:
        payloads, sk = parse_plain(hdr, data)
    except (SyntaxError_, UnsupportedCritical):
        return False
    if sk is not None or not any(isinstance(p, NotifyPayload) and p.notify_type == Notify.INVALID_IKE_SPI
                                 for p in payloads):
        return False
    st["invalid_ike_spi_received"] += 1
    o = sa.outstanding
    if addr[0] != sa.remote[0]:
        st["invalid_ike_spi_unmatched"] += 1
        return True
    if o.invalid_ike_spi:
        st["invalid_ike_spi_check_running"] += 1
        return True
    if not ctx.limits.hints.take(addr[0], now):
        st["invalid_ike_spi_rate_limited_in"] += 1
        return True
    o.invalid_ike_spi = True
    what = "INVALID_IKE_SPI from %s: the peer may have lost this IKE SA (a hint, RFC 7296 §2.21.4); " \
        "request %d " % (addr[0], o.mid)
    if o.hinted and o.policy is _hint_policy(ctx):     # an INVALID_SPI put it there a moment ago
        st["invalid_ike_spi_on_hint_schedule"] += 1
        ctx.warn(sa, what + "already retransmitted " + _schedule(o.policy))
    elif _hasten(sa, now, resend=False):
        st["liveness_checks_from_ike_spi_hints"] += 1
        ctx.warn(sa, what + "now retransmitted " + _schedule(o.policy))
    else:
        st["invalid_ike_spi_no_sooner"] += 1
    return True


def _hint_policy(ctx):
    return ctx.settings.hint_retransmit or ctx.retransmit


def _schedule(p) -> str:
    return "%.2g s x %.2g^n, %d times" % (p.timeout, p.base, p.tries)


def _hasten(sa, now: float, resend: bool) -> bool:
    """Move the request in flight to the hint schedule when that ends sooner than what is left of
    its own, once per request; ``resend``: send it again now too (the hint was no answer to it,
    and it may have gone to a router that no longer holds the address). Returns whether it moved."""
    ctx, o = sa.ctx, sa.outstanding
    hint = _hint_policy(ctx)
    left = (o.next_at - now) + sum(o.policy.delay(k) for k in range(o.tries + 1, o.policy.tries + 1))
    o.hinted = True
    if sum(hint.delay(k) for k in range(hint.tries + 1)) >= left:
        return False
    o.policy, o.tries, o.next_at = hint, 0, now + hint.delay(0)
    if resend:
        ctx.stats["retransmits"] += 1
        for d in o.data:
            ctx.send(d, sa.remote, sa.local)
    sa.reschedule()
    return True


def unprotected_received(ctx, hdr, payloads, addr, now: float):
    """An unprotected INFORMATIONAL request that belongs to no IKE SA of ours. Only N(INVALID_SPI)
    means anything (a hint); it is never answered (§1.5)."""
    st = ctx.stats
    hints = [p for p in payloads
             if isinstance(p, NotifyPayload) and p.notify_type == Notify.INVALID_SPI and len(p.data) == 4]
    if not hints:
        st["unprotected_informational_ignored"] += 1
        return
    st["invalid_spi_hints_received"] += 1
    for n in hints[:MAX_HINTS_PER_MESSAGE]:
        spi = int.from_bytes(n.data, "big")
        sa = next((c.ike for c in ctx.children_sending_with(spi) if c.state == ChildSaState.INSTALLED
                   and c.ike.remote[0] == addr[0] and c.ike.state == IkeSaState.ESTABLISHED), None)
        if sa is None:
            st["invalid_spi_hints_unmatched"] += 1
            continue
        o = sa.outstanding
        if (o.hinted if o is not None else liveness.check_running(sa)):
            st["invalid_spi_hints_check_running"] += 1
            continue
        if not ctx.limits.hints.take(addr[0], now):
            st["invalid_spi_hints_rate_limited"] += 1
            continue
        what = "unprotected INVALID_SPI from %s for SPI %08x: the peer may have lost this IKE SA (a hint, " \
            "RFC 7296 §1.5); " % (addr[0], spi)
        if o is not None:
            if _hasten(sa, now, resend=True):
                st["liveness_checks_hastened_by_hints"] += 1
                ctx.warn(sa, what + "request %d sent again now, then retransmitted %s" % (o.mid, _schedule(o.policy)))
            else:
                st["invalid_spi_hints_no_sooner"] += 1
        elif liveness.request_check(sa, now, ctx.settings.hint_retransmit):
            st["liveness_checks_from_hints"] += 1
            o = sa.outstanding
            if o is not None:           # sent at once (not held back by pacing)
                o.hinted = True
                ctx.warn(sa, what + "liveness check %d sent now, retransmitted %s" % (o.mid, _schedule(o.policy)))
        else:
            st["invalid_spi_hints_check_running"] += 1


def protected_received(sa, notify, now: float):
    """N(INVALID_SPI) inside our IKE SA: the peer lost the Child SA that receives on that SPI."""
    ctx = sa.ctx
    if len(notify.data) != 4:
        return
    spi = int.from_bytes(notify.data, "big")
    child = next((c for c in sa.children.values() if c.spi_out == spi and c.state == ChildSaState.INSTALLED),
                 None)
    if child is None:
        ctx.stats["invalid_spi_protected_unmatched"] += 1
        return
    ctx.stats["invalid_spi_protected_honoured"] += 1
    ctx.recreate_child(sa, child, now, "peer reports INVALID_SPI for it")
