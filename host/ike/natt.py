"""NAT traversal after IKE_SA_INIT (RFC 7296 §2.23, RFC 3948): what keeps a tunnel through a NAT.

* NAT-keepalives: while we are behind a NAT (our NAT_DETECTION_DESTINATION_IP hash did not match
  at the peer's end, or encapsulation is forced), a single 0xFF byte goes from our NAT-T port to
  the peer every ``EngineSettings.nat_keepalive`` seconds (RFC 3948 §2.3, §4: 20 s by default), so
  the NAT keeps our mapping while no other traffic does. ESP leaves through the board, which the
  engine does not see, so the keepalive is sent on its schedule regardless.
* A mapping that changes anyway: the side not behind the NAT follows the address and port of the
  latest authentic IKE message (§2.23; the engine's NAT update) and tells the driver with
  :class:`~host.ike.events.IkeSaMoved`, since the ESP-in-UDP of every Child SA must follow too.
"""
from __future__ import annotations

from .states import IkeSaState

KEEPALIVE = b"\xff"             # RFC 3948 §2.3
TIMER = ("nat_keepalive",)


def arm(sa, now: float):
    """Start the keepalives of a freshly established (or rekeyed-into) IKE SA behind a NAT."""
    interval = sa.ctx.settings.nat_keepalive
    if interval > 0 and sa.nat_local:
        sa.set_timer(TIMER, now + interval)


def on_timer(sa, key, now: float):
    ctx = sa.ctx
    interval = ctx.settings.nat_keepalive
    if interval <= 0 or not sa.nat_local or sa.state != IkeSaState.ESTABLISHED or sa.successor is not None:
        return
    ctx.send(KEEPALIVE, sa.remote, sa.local, keepalive=True)
    ctx.stats["nat_keepalives"] += 1
    sa.set_timer(TIMER, now + interval)
