"""IKE message fragmentation (RFC 7383): large protected messages go out as Encrypted Fragment
(SKF) payloads, each in its own datagram, so a big IKE_AUTH (certificates) never relies on IP
fragments, which NATs and firewalls drop.

* Negotiated in IKE_SA_INIT with N(IKEV2_FRAGMENTATION_SUPPORTED) both ways (§2.3); a rekeyed IKE
  SA keeps it. Only messages after IKE_SA_INIT are fragmented, and only when they would not fit
  ``fragment_size`` (the whole IP datagram, as strongSwan counts it).
* Sending (``Message.encode_fragments``): the inner payload chain is cut into chunks; every
  fragment has its own IV, padding and ICV, and its AAD runs from the IKE header to the end of
  the Total Fragments field (§2.5). A retransmission resends every fragment unchanged.
* Receiving: each fragment's ICV is checked before it is kept (§2.6.2), so only the peer can use
  the memory — but a peer is anyone who completed an IKE_SA_INIT, and half-open SAs are cheap to
  make. So at most ``MAX_FRAGMENTS`` and ``MAX_MESSAGE`` bytes per message, ``MAX_HELD_PER_PEER``
  per peer address (whatever its number of half-open SAs), else the message is given up; and
  ``MAX_HELD`` in all, where a peer that needs room takes it from the address holding the most
  (its largest message is dropped, to start over when it is sent again): many addresses parking
  fragments cannot keep another peer's IKE_AUTH out. A larger Total Fragments for the same
  message starts over (the sender re-fragmented it smaller); a smaller one is dropped. When all
  have arrived, the joined plaintext is parsed as the message's payloads, first type from
  fragment 1. A fragment of a request already answered brings the answer again (§2.6.1).
"""
from __future__ import annotations

import struct

from .constants import IKE_HEADER_LEN, Flag
from .payloads import SyntaxError_, decode_chain

MAX_FRAGMENTS = 32
MAX_MESSAGE = 32 * 1024     # plaintext one reassembly may hold (certificate chains fit easily)
MAX_HELD_PER_PEER = 2 * MAX_MESSAGE    # all reassemblies of the SAs with one peer address
MAX_HELD = 8 * 1024 * 1024  # all reassemblies of an engine together
SKF_HEADER_LEN = 8          # generic header + Fragment Number + Total Fragments
_SKF = struct.Struct("!BBHHH")


class Reassembly:
    __slots__ = ("key", "total", "parts", "first", "size", "given_up", "peer")

    def __init__(self, key, total, peer):
        self.key, self.total, self.parts, self.first, self.size = key, total, {}, 0, 0
        self.given_up = False           # over a limit: the rest of this message is dropped
        self.peer = peer                # the address its bytes are counted against


def _hold(sa, r, n):
    """Count ``n`` more bytes of ``sa``'s reassembly ``r`` (negative: given back)."""
    ctx = sa.ctx
    ctx.fragment_bytes += n
    held = ctx.fragment_peers.setdefault(r.peer, {})
    left = held.get(sa, 0) + n
    if left > 0:
        held[sa] = left
    else:
        held.pop(sa, None)
        if not held:
            del ctx.fragment_peers[r.peer]


def _peer_bytes(ctx, peer) -> int:
    return sum(ctx.fragment_peers.get(peer, {}).values())


def _make_room(ctx, peer, need) -> bool:
    """Free ``need`` bytes of MAX_HELD by dropping messages of the address that holds the most,
    unless that is ``peer`` itself. False: no room."""
    while ctx.fragment_bytes + need > MAX_HELD:
        fattest = max(ctx.fragment_peers, key=lambda ip: _peer_bytes(ctx, ip), default=None)
        if fattest is None or fattest == peer:
            return False
        held = ctx.fragment_peers[fattest]
        victim = max(held, key=held.get)
        drop(victim)
        ctx.stats["fragments_evicted"] += 1
    return True


def drop(sa):
    """Forget ``sa``'s partial message (replaced, completed, or the SA is gone)."""
    r, sa.reassembly = sa.reassembly, None
    if r is not None and r.size:
        _hold(sa, r, -r.size)


def limit(sa) -> int:
    """The largest IKE message that fits ``fragment_size`` from ``sa``'s addresses."""
    size = sa.ctx.settings.fragment_size
    ip = 40 if ":" in sa.remote[0] else 20
    marker = 4 if sa.local[1] != 500 else 0     # the non-ESP marker on port 4500 (RFC 3948)
    return size - ip - 8 - marker


def outgoing(sa, msg, data: bytes) -> list[bytes]:
    """The datagrams that carry ``msg`` (already encoded whole as ``data``)."""
    if not sa.fragmentation or len(data) <= limit(sa):
        return [data]
    frags = msg.encode_fragments(sa.cipher, limit(sa))
    sa.ctx.stats["fragmented_messages_sent"] += 1
    sa.ctx.stats["fragments_sent"] += len(frags)
    return frags


def receive(sa, hdr, data: bytes, now: float):
    """A datagram whose payload is an SKF. Returns a callable that yields the whole message's
    payloads once the last fragment arrived (raising SyntaxError_ if they are malformed), else
    None: kept, dropped, or an old request's answer resent."""
    ctx, st = sa.ctx, sa.ctx.stats
    if not sa.fragmentation or sa.cipher is None:
        st["fragments_unexpected"] += 1
        return None
    response = bool(hdr.flags & Flag.RESPONSE)
    if response:
        o = sa.outstanding
        if o is None or hdr.mid != o.mid or hdr.exchange != o.exchange:
            st["unexpected_response"] += 1
            return None
    elif hdr.mid != sa.peer_mid and hdr.mid != sa.peer_mid - 1:
        st["bad_message_id"] += 1
        return None
    if len(data) < IKE_HEADER_LEN + SKF_HEADER_LEN:
        st["malformed"] += 1
        return None
    nxt, _flags, plen, num, total = _SKF.unpack_from(data, IKE_HEADER_LEN)
    if plen != len(data) - IKE_HEADER_LEN or not 1 <= num <= total or total > MAX_FRAGMENTS:
        st["fragments_malformed"] += 1
        return None
    plain = sa.cipher.open_(data, IKE_HEADER_LEN + SKF_HEADER_LEN)
    if plain is None and not response and hdr.mid == sa.peer_mid - 1 and sa.prev_cipher is not None:
        # a resent IKE_INTERMEDIATE request: we re-keyed after answering it (RFC 9370 §2.2.2)
        plain = sa.prev_cipher.open_(data, IKE_HEADER_LEN + SKF_HEADER_LEN)
    if plain is None or plain[-1] + 1 > len(plain):
        st["bad_icv"] += 1
        return None
    if not response and hdr.mid == sa.peer_mid - 1:
        # §2.6.1: the peer did not get our answer; the first fragment of its resend brings it
        if num == 1 and sa.last_response is not None and sa.pending_mid != hdr.mid:
            st["retransmits_answered"] += 1
            for d in sa.last_response[0]:
                ctx.send(d, sa.last_response[1], sa.last_response[2])
        return None
    key = (response, hdr.mid, hdr.exchange)
    r = sa.reassembly
    if r is None or r.key != key or total > r.total:
        drop(sa)
        r = sa.reassembly = Reassembly(key, total, sa.remote[0])
    elif total < r.total or r.given_up:
        st["fragments_dropped"] += 1         # an older, larger-grained copy, or a message given up
        return None
    if num in r.parts:
        st["fragments_duplicate"] += 1
        return None
    chunk = plain[:len(plain) - 1 - plain[-1]]
    n = len(chunk)
    if (r.size + n > MAX_MESSAGE or _peer_bytes(ctx, r.peer) + n > MAX_HELD_PER_PEER
            or not _make_room(ctx, r.peer, n)):
        st["fragments_over_limit"] += 1      # §2.6.2 leaves the limits to us: the message is given up
        if r.size:
            _hold(sa, r, -r.size)
        r.parts, r.size, r.given_up = {}, 0, True
        return None
    r.parts[num] = chunk
    r.size += n
    _hold(sa, r, n)
    if num == 1:
        r.first = nxt
    st["fragments_received"] += 1
    if len(r.parts) < r.total:
        return None
    drop(sa)
    whole = b"".join(r.parts[i] for i in range(1, r.total + 1))
    st["fragmented_messages_received"] += 1

    def opened():
        payloads, nested = decode_chain(r.first, whole, 0, len(whole))
        if nested is not None:
            raise SyntaxError_("Encrypted payload inside a fragmented message")
        return payloads
    return opened
