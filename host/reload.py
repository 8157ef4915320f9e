"""A configuration reload (SIGHUP, `ikeoffloadctl reload`, systemd's ExecReload), as swanctl
--load-all does it: what did not change keeps running, tunnels and traffic untouched.

* Connections (IkeEngine.load_connections): an unchanged one keeps its IKE SAs; a removed one's
  are deleted (a Delete to the peer, RFC 7296 §1.4.1); a changed one's are deleted and it is
  established anew; an added one starts (start_action = start).
* Boards: an added one is opened (HELLO, flush) and joins the pool; a removed one's IKE SAs are
  flushed as on a loss — a Delete to each peer, the connections re-established on a ready board
  (RFC 7296 §2.4) — then the board is flushed and closed; a changed one (port, profile, timers,
  link key) is removed and added.
* Settings: log levels, flush_on_board_loss and replay_window (for new Child SAs) take effect;
  those bound at start (addresses, ports, sockets, the TUN device, [ike]) are kept as they are
  and named in the answer: they need a restart.

The new file is checked whole first — syntax, every setting, and for added boards their link keys
and ports — and a bad one changes nothing: the answer names file:line: key.
"""
import asyncio
import logging
import os
import time

from firmware.link import keyfile
from host import config as cfgmod
from host import logs, preflight
from host.offload.events import BoardLost

log = logging.getLogger("ikeoffloadd")

# Settings bound when the daemon starts: (attribute of DaemonConfig, its key)
RESTART_KEYS = (("listen_addrs", "daemon.listen"), ("control_socket", "daemon.control_socket"),
                ("metrics", "daemon.metrics"), ("tun", "dataplane.tun"), ("mtu", "dataplane.mtu"),
                ("routing_table", "dataplane.routing_table"), ("rule_priority", "dataplane.rule_priority"),
                ("fwmark", "dataplane.fwmark"), ("route_protocol", "dataplane.route_protocol"),
                ("engine", "ike"), ("retransmit", "ike.retransmit"), ("ha", "ha.enabled"),
                ("ha_track_file", "ha.track_file"))


def restart_needed(old, new):
    """Keys of the settings that differ and take effect only at the next start."""
    return [key for attr, key in RESTART_KEYS if getattr(old, attr) != getattr(new, attr)]


def board_changes(old, new, key_of=None):
    """(unchanged, changed, added, removed) board names between two lists of BoardConfig.
    ``key_of(board)``: the link key a board uses now (a new key in the same file is a change)."""
    before = {b.name: b for b in old}
    after = {b.name: b for b in new}
    unchanged, changed = [], []
    for name, b in after.items():
        if name not in before:
            continue
        same = before[name] == b and (key_of is None or b.link_key is None or
                                      key_of(before[name]) == _key(b.link_key))
        (unchanged if same else changed).append(name)
    added = [n for n in after if n not in before]
    removed = [n for n in before if n not in after]
    return unchanged, changed, added, removed


def _key(path):
    try:
        return keyfile.read(path)
    except keyfile.KeyFileError:
        return None             # unreadable: a change (the board's checks name the problem)


class Reloader:
    def __init__(self, daemon):
        self.daemon = daemon
        self.reloads = 0
        self.failures = 0
        self.last = None             # the last reload's answer or error (`ikeoffloadctl stats`)
        self._lock = asyncio.Lock()

    async def reload(self, path=None):
        """Load the configuration file again and apply it; returns what changed. A bad file
        raises ConfigError (file:line: key) and changes nothing."""
        async with self._lock:
            d = self.daemon
            path = path or d.cfg.path
            try:
                new = cfgmod.load(path)
                boards = board_changes(d.cfg.boards, new.boards, self._key_of)
                locks = self._check_boards(new, boards)
            except cfgmod.ConfigError as e:
                self.failures += 1
                self.last = {"ok": False, "error": str(e), "at": time.time()}
                raise
            try:
                answer = await self._apply(new, boards, locks)
            except Exception as e:
                self.failures += 1
                self.last = {"ok": False, "error": "%s: %s" % (type(e).__name__, e), "at": time.time()}
                raise
            self.reloads += 1
            self.last = dict(answer, ok=True, at=time.time())
            return answer

    def _key_of(self, board):
        client = self.daemon.clients.get(board.name)
        return client.link_options.get("link_key") if client is not None else None

    def _check_boards(self, new, boards):
        """The link keys and ports of the boards to open, checked as at start; returns the locks
        of their ports (a port a board of the running configuration holds is locked already)."""
        _unchanged, changed, added, _removed = boards
        held = {b.port for b in self.daemon.cfg.boards}
        locks = {}
        try:
            for i, b in enumerate(new.boards):
                if b.name in changed or b.name in added:
                    fd = preflight.check_board(new, i, b, port=b.port not in held)
                    if fd is not None:
                        locks[b.name] = fd
        except BaseException:
            for fd in locks.values():
                os.close(fd)
            raise
        return locks

    async def _apply(self, new, boards, locks):
        d = self.daemon
        old = d.cfg
        now = time.monotonic()
        unchanged_b, changed_b, added_b, removed_b = boards
        override = d.log_override
        logs.set_levels(override or new.log_level, None if override else new.log_levels)
        for w in new.warnings:
            log.warning("%s", w)
        restart = restart_needed(old, new)
        for attr, _key in RESTART_KEYS:        # kept as they run until the next start
            setattr(new, attr, getattr(old, attr))
        d.recovery.flush = new.flush_on_board_loss
        d.child_sas.replay_window = new.replay_window

        # Boards that go leave the pool first: nothing new is placed on them.
        going = {}
        for name in removed_b + changed_b:
            client = d.clients[name]
            s = client.session
            lost = BoardLost(name, "removed" if name in removed_b else "changed",
                             "%s by a configuration reload" % ("removed" if name in removed_b else "changed"),
                             now, s.last_ack_at if s is not None else None, tuple(client.sas()))
            going[name] = (lost, d.pool.on_event(lost))
            del d.pool.boards[name]

        # Connections (the engine's swanctl --load-all); a flushed connection waiting for a
        # board to come back is the engine's now if the reload removed it or starts it itself.
        started = d.connections_started and bool(d.pool.ready_boards()) and d.ha.active
        res = d.udp.call(d.engine.load_connections, new.connections, start=started)
        d.recovery.forget(res.removed + (res.changed if started else []))
        if d.on_demand is not None:
            d.on_demand.reloaded(res.removed, res.changed, res.added)

        # The IKE SAs of the boards that go, flushed as on a loss (Deletes, re-established on a
        # ready board); then the boards are flushed and closed.
        deleted = set(res.deleted)
        flushed = []
        for lost, gone in going.values():
            inc = d.recovery.flush_board(lost, gone - deleted, now)
            flushed += inc.ike_sas
            await d.recovery.flushed(inc)       # its last slice dropped before the board closes
        for name in going:
            await d.clients.pop(name).flush_and_close()
            d.datapath.queues.pop(name, None)
        self._move_locks(old, new, going, locks)

        # Boards that come: opened (HELLO, flush) and placed on once they are ready.
        d.cfg = new
        for b in new.boards:
            if b.name in changed_b or b.name in added_b:
                client = d.add_board(b)
                await client.start(retry=True)
        answer = {"connections": {"unchanged": res.unchanged, "changed": res.changed, "added": res.added,
                                  "removed": res.removed},
                  "boards": {"unchanged": unchanged_b, "changed": changed_b, "added": added_b, "removed": removed_b},
                  "ike_sas_deleted": sorted(res.deleted), "ike_sas_flushed": sorted(flushed),
                  "ike_sas_initiated": sorted(res.initiated), "restart_needed": restart}
        log.info("configuration reloaded from %s: connections %d unchanged, %d changed, %d added, %d removed; "
                 "boards %d unchanged, %d changed, %d added, %d removed; %d IKE SA(s) deleted, %d flushed, "
                 "%d initiated", new.path, len(res.unchanged), len(res.changed), len(res.added),
                 len(res.removed), len(unchanged_b), len(changed_b), len(added_b), len(removed_b),
                 len(res.deleted), len(flushed), len(res.initiated))
        if restart:
            log.warning("%s: %s changed: kept as running until the next start", new.path, ", ".join(restart))
        return answer

    def _move_locks(self, old, new, going, locks):
        """Board port locks: those of the boards that went are released, unless a board of the
        new configuration took the port over; the new boards' locks are kept."""
        guard = self.daemon.guard
        by_port = {b.port: guard.boards.pop(b.name) for b in old.boards
                   if b.name in going and b.name in guard.boards}
        opened = set(going) | set(locks) | {b.name for b in new.boards} - {b.name for b in old.boards}
        for b in new.boards:
            if b.name in opened:
                fd = locks.get(b.name)
                if fd is None:
                    fd = by_port.pop(b.port, None)
                if fd is not None:
                    guard.boards[b.name] = fd
        for fd in by_port.values():
            os.close(fd)
