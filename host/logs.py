"""ikeoffloadd's loggers: one per subsystem, each with its own level, and the records that
`ikeoffloadctl log` follows.

    [daemon]
    log_level = "info"                                 # every subsystem not named below
    log_levels = { ike = "debug", board = "warning" }  # per subsystem

Subsystems and their loggers:

    daemon     ikeoffloadd             the event loop, board-loss flushes, Child SA installs, reload
    ike        ikeoffloadd.ike         the IKE engine (host/ike/) and its UDP driver
    board      ikeoffloadd.board       the boards: link, heartbeats, sessions (host/offload/)
    dataplane  ikeoffloadd.datapath    the ESP data path (host/dataplane/)
    control    ikeoffloadd.control     the control socket, ikeoffloadctl's requests, metrics

Nothing logs key material: SA keys, IKE keys and PSKs appear in no message at any level (the
daemon's tests look for them in the log of a whole run).
"""
import collections
import logging
import time

LEVELS = ("debug", "info", "warning", "error")
SUBSYSTEMS = {"daemon": "ikeoffloadd", "ike": "ikeoffloadd.ike", "board": "ikeoffloadd.board",
              "dataplane": "ikeoffloadd.datapath", "control": "ikeoffloadd.control"}


def set_levels(default, levels=None):
    """The root logger at ``default``; each subsystem at its own level from ``levels``
    ({subsystem: level}), else at ``default``."""
    levels = levels or {}
    logging.getLogger().setLevel(getattr(logging, default.upper()))
    for sub, name in SUBSYSTEMS.items():
        logging.getLogger(name).setLevel(getattr(logging, levels.get(sub, default).upper()))


def subsystem_of(logger_name):
    """The subsystem a logger belongs to (its longest configured prefix)."""
    best = "daemon"
    for sub, name in SUBSYSTEMS.items():
        if (logger_name == name or logger_name.startswith(name + ".")) and len(name) > len(SUBSYSTEMS[best]):
            best = sub
    return best


class Followers(logging.Handler):
    """Hands every record the loggers let through to the `ikeoffloadctl log` clients following
    them, as dicts; a client that falls behind by ``backlog`` records loses the oldest (and is
    told how many)."""

    def __init__(self, backlog=1000):
        super().__init__(logging.DEBUG)
        self.backlog = backlog
        self.queues = []
        self.lost = 0

    def follow(self):
        q = collections.deque(maxlen=self.backlog)
        self.queues.append(q)
        return q

    def unfollow(self, q):
        self.queues = [x for x in self.queues if x is not q]

    def emit(self, record):
        if not self.queues:
            return
        try:
            item = {"time": record.created, "level": record.levelname.lower(),
                    "subsystem": subsystem_of(record.name), "message": record.getMessage()}
        except Exception:          # a bad format string must not break the daemon's logging
            self.handleError(record)
            return
        for q in self.queues:
            if len(q) == q.maxlen:
                self.lost += 1
            q.append(item)


def format_record(item):
    """One followed record as `ikeoffloadctl log` prints it."""
    t = time.strftime("%H:%M:%S", time.localtime(item["time"])) + ".%03d" % (item["time"] % 1 * 1000)
    return "%s %-7s %-9s %s" % (t, item["level"], item["subsystem"], item["message"])
