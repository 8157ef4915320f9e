"""What `ikeoffloadctl initiate`, `terminate` and `rekey` do, and how they wait for the outcome
(as swanctl's do): the command goes to the engine, then the answer waits for the engine's
events that settle it — the IKE SA and its Child SA up, the IKE SAs gone, the successor in place
— or for ``timeout`` seconds (0: answer at once). A timeout leaves the action running.
"""
import asyncio
import collections

from host.ike import events as ike_ev


class Failed(LookupError):
    """The action failed (the control socket answers the message; ikeoffloadctl exits 1)."""


class Waiters:
    """Futures waiting for the engine's events: ``wait(match, timeout, since)``, where
    ``match(event)`` returns None (not yet) or the result, or raises Failed; ``feed(event)``
    settles those it matches. The last ``keep`` events are kept, so that a wait sees those that
    came between ``mark()`` and the wait (while the command ran)."""

    def __init__(self, keep=256):
        self._waiting = []
        self._recent = collections.deque(maxlen=keep)
        self._seq = 0

    def mark(self):
        return self._seq

    def feed(self, ev):
        self._seq += 1
        self._recent.append((self._seq, ev))
        if not self._waiting:
            return
        for item in list(self._waiting):
            match, fut = item
            if fut.done():
                continue
            try:
                r = match(ev)
            except Exception as e:        # a failed outcome
                fut.set_exception(e)
                continue
            if r is not None:
                fut.set_result(r)

    async def wait(self, match, timeout, since=None):
        if since is not None:
            for n, ev in list(self._recent):
                if n > since:
                    r = match(ev)
                    if r is not None:
                        return r
        fut = asyncio.get_running_loop().create_future()
        item = (match, fut)
        self._waiting.append(item)
        try:
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            raise TimeoutError("no outcome within %g s (the action goes on in the daemon)" % timeout) from None
        finally:
            self._waiting.remove(item)


class Operations:
    def __init__(self, engine, call, waiters):
        """engine: the IkeEngine; call(fn, *args, **kw): an engine command, then what it queued is
        sent (IkeUdpEndpoint.call); waiters: the Waiters the daemon feeds every engine event."""
        self.engine = engine
        self.call = call
        self.waiters = waiters

    # ---- initiate -----------------------------------------------------------------------------
    async def initiate(self, conn, child=None, timeout=30.0):
        """Bring up ``conn`` (with Child SA ``child``, or its first); done when the Child SA is
        installed on a board (or the IKE SA is up, for a connection without children)."""
        c = self.engine.connections.get(conn)
        if c is None:
            raise KeyError("no connection %r (known: %s)" % (conn, ", ".join(self.engine.connections) or "none"))
        if child is not None and child not in c.children:
            raise KeyError("connection %s has no child %r (known: %s)" % (conn, child, ", ".join(c.children)))
        mark = self.waiters.mark()
        try:
            ike_id = self.call(self.engine.initiate, conn, child=child)
        except ValueError as e:
            raise Failed(str(e)) from None
        if not timeout:
            return {"ike_id": ike_id, "conn": conn}
        want_child = bool(c.children)
        state = {}

        def match(ev):
            if isinstance(ev, ike_ev.IkeSaUp) and ev.ike_id == ike_id:
                state["ike"] = ev
                return None if want_child else {"ike_id": ike_id, "conn": conn, "established": True}
            if isinstance(ev, ike_ev.ChildSaUp) and ev.ike_id == ike_id:
                return {"ike_id": ike_id, "conn": conn, "established": True, "child": ev.name,
                        "handle": ev.handle}
            if isinstance(ev, ike_ev.ChildSaFailed) and ev.ike_id == ike_id:
                raise Failed("IKE SA #%d up, but Child SA %s failed: %s" % (ike_id, ev.name, ev.reason))
            if isinstance(ev, ike_ev.IkeSaDown) and ev.ike_id == ike_id:
                raise Failed("IKE SA #%d for %s failed: %s" % (ike_id, conn, ev.reason))
            return None
        return await self.waiters.wait(match, timeout, mark)

    # ---- terminate ----------------------------------------------------------------------------
    async def terminate(self, conn=None, ike_id=None, child_id=None, timeout=30.0):
        """Delete IKE SA ``ike_id``, every IKE SA of ``conn``, or Child SA ``child_id`` (an
        INFORMATIONAL Delete, §1.4.1); done when they are gone."""
        mark = self.waiters.mark()
        if child_id is not None:
            child = self._child(child_id)
            self.call(self.engine.delete_child, child_id, reason="terminated by operator")
            return await self._gone(lambda ev: isinstance(ev, ike_ev.ChildSaDelete) and ev.handle == child_id,
                                    [child_id], lambda: self._child_or_none(child_id) is None, timeout,
                                    {"terminated_child": child_id, "ike_id": child.ike.ike_id}, mark)
        ids = self._ike_ids(conn, ike_id)
        for i in ids:
            self.call(self.engine.delete_ike, i, reason="terminated by operator")
        pending = set(i for i in ids if self.engine.ike_sa(i) is not None)
        return await self._gone(lambda ev: isinstance(ev, ike_ev.IkeSaDown) and ev.ike_id in pending,
                                pending, lambda: not any(self.engine.ike_sa(i) for i in ids), timeout,
                                {"terminated": ids}, mark)

    async def _gone(self, is_gone, pending, all_gone, timeout, result, mark):
        pending = set(pending)
        if not timeout or all_gone():
            return result

        def match(ev):
            if is_gone(ev):
                pending.discard(getattr(ev, "handle", None) if isinstance(ev, ike_ev.ChildSaDelete) else ev.ike_id)
            return result if not pending or all_gone() else None
        return await self.waiters.wait(match, timeout, mark)

    # ---- rekey --------------------------------------------------------------------------------
    async def rekey(self, conn=None, ike_id=None, child_id=None, timeout=30.0):
        """Rekey IKE SA ``ike_id`` (or every IKE SA of ``conn``; §2.18) or Child SA ``child_id``
        (§1.3.3); done when the successors are up."""
        mark = self.waiters.mark()
        if child_id is not None:
            self._child(child_id)
            if not self.call(self.engine.rekey_child, child_id):
                raise Failed("Child SA #%d cannot be rekeyed now (not installed, being rekeyed or replaced)"
                             % child_id)
            if not timeout:
                return {"rekeying_child": child_id}
            return await self.waiters.wait(
                lambda ev: {"rekeyed_child": child_id, "new_handle": ev.handle}
                if isinstance(ev, ike_ev.ChildSaUp) and ev.rekey_of == child_id else None, timeout, mark)
        ids = self._ike_ids(conn, ike_id)
        for i in ids:
            if not self.call(self.engine.rekey_ike, i):
                raise Failed("IKE SA #%d cannot be rekeyed now" % i)
        if not timeout:
            return {"rekeying": ids}
        done = {}

        def match(ev):
            if isinstance(ev, ike_ev.IkeSaRekeyed) and ev.old_ike_id in ids:
                done[ev.old_ike_id] = ev.new_ike_id
            elif isinstance(ev, ike_ev.IkeSaDown) and ev.ike_id in ids and ev.replaced_by is None:
                raise Failed("IKE SA #%d went down while being rekeyed: %s" % (ev.ike_id, ev.reason))
            return {"rekeyed": {str(k): v for k, v in sorted(done.items())}} if len(done) == len(ids) else None
        return await self.waiters.wait(match, timeout, mark)

    # ---- lookups ------------------------------------------------------------------------------
    def _ike_ids(self, conn, ike_id):
        if ike_id is not None:
            if self.engine.ike_sa(ike_id) is None:
                raise LookupError("no IKE SA #%s (ikeoffloadctl list-sas shows them)" % ike_id)
            return [ike_id]
        if conn not in self.engine.connections:
            raise KeyError("no connection %r (known: %s)" % (conn, ", ".join(self.engine.connections) or "none"))
        ids = [sa.ike_id for sa in self.engine.ike_sas() if sa.conn and sa.conn.name == conn]
        if not ids:
            raise LookupError("no IKE SA for %s" % conn)
        return ids

    def _child_or_none(self, handle):
        for sa in self.engine.ike_sas():
            c = sa.children.get(handle)
            if c is not None:
                return c
        return None

    def _child(self, handle):
        c = self._child_or_none(handle)
        if c is None:
            raise LookupError("no Child SA #%s (ikeoffloadctl list-sas shows their handles)" % handle)
        return c
