"""ikeoffloadd: an IKEv2 daemon that offloads ESP to MicroPython boards (host/daemon.py runs it).

    ikeoffloadd --config /etc/ikeoffload/ikeoffloadd.toml [--log-level info]   # SIGHUP reloads it
    ikeoffloadd --check-config FILE

The command line, its logging (journald's priority prefixes under systemd) and the checks made
before anything changes (host/preflight.py: one daemon at a time, ports free, board ports there).
"""
import asyncio
import gc
import logging
import os
import sys

from firmware import cli
from host import __version__
from host import config as cfgmod
from host import logs, preflight
from host.daemon import Daemon

log = logging.getLogger("ikeoffloadd")


class JournalFormatter(logging.Formatter):
    """stderr lines journald files by priority (<N> prefix, sd-daemon(3)); plain time-stamped lines
    on a terminal or file."""

    PRIO = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}

    def __init__(self, journal):
        super().__init__("%(message)s" if journal else "%(asctime)s %(levelname)-7s %(name)s: %(message)s")
        self.journal = journal

    def format(self, record):
        s = super().format(record)
        return "<%d>%s" % (self.PRIO.get(record.levelno, 6), s) if self.journal else s


def setup_logging(level, levels=None):
    """stderr (journald under systemd), and the records `ikeoffloadctl log` follows; ``levels``:
    per subsystem (host/logs.py). Returns the followers' handler."""
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(JournalFormatter(bool(os.environ.get("JOURNAL_STREAM"))))
    followers = logs.Followers()
    root = logging.getLogger()
    root.handlers[:] = [h, followers]
    logs.set_levels(level, levels)
    return followers


def main(argv=None):
    ap = cli.ArgumentParser(prog="ikeoffloadd", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", "-c", default="/etc/ikeoffload/ikeoffloadd.toml")
    ap.add_argument("--check-config", metavar="FILE", help="validate FILE and exit (0: valid)")
    ap.add_argument("--log-level", choices=cfgmod.LOG_LEVELS, help="override daemon.log_level")
    ap.add_argument("--no-tun", action="store_true", help="run without a TUN device (control plane only)")
    ap.add_argument("--version", action="version", version="%(prog)s " + __version__)
    args = ap.parse_args(argv)
    if args.check_config:
        try:
            c = cfgmod.load(args.check_config)
        except cfgmod.ConfigError as e:
            print("ikeoffloadd: %s" % e, file=sys.stderr)
            return 1
        for w in c.warnings:
            print("ikeoffloadd: warning: %s" % w, file=sys.stderr)
        print("%s: valid (%d board(s), %d connection(s))" % (args.check_config, len(c.boards), len(c.connections)))
        return 0
    try:
        c = cfgmod.load(args.config)
    except cfgmod.ConfigError as e:
        print("ikeoffloadd: %s" % e, file=sys.stderr)
        return 1
    followers = setup_logging(args.log_level or c.log_level, None if args.log_level else c.log_levels)
    for w in c.warnings:
        log.warning("%s", w)
    try:      # a second daemon, ports in use, bad board ports: refused before anything changes
        guard = preflight.check(c, tun=not args.no_tun)
    except cfgmod.ConfigError as e:
        log.error("%s", e)
        return 1
    gc.set_threshold(20000, 20, 20)   # thousands of live SAs make full collections expensive
    try:
        asyncio.run(Daemon(c, tun=not args.no_tun, guard=guard, log_override=args.log_level,
                           followers=followers).run())
    except OSError as e:
        log.error("%s", preflight.runtime_error(c, e))
        return 1
    finally:
        guard.release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
