"""systemd's readiness and watchdog protocol (sd_notify(3)) for a `Type=notify` service.

The service manager names a unix datagram socket in $NOTIFY_SOCKET (a path, or an abstract name
written with a leading "@"); the daemon sends it newline-separated KEY=VALUE assignments:
READY=1 once it serves, RELOADING=1 while it loads its configuration again (READY=1 after),
STOPPING=1 when it begins to shut down, STATUS=<text> for
`systemctl status`, and WATCHDOG=1 at least every $WATCHDOG_USEC microseconds when the unit sets
WatchdogSec= (for the process $WATCHDOG_PID names, if it names one). The pings are sent from a
timer on the event loop, so a loop that stops turning stops them and systemd restarts the service.
Without $NOTIFY_SOCKET every call does nothing.
"""
import os
import socket
import time


def watchdog_interval(env):
    """Seconds between WATCHDOG=1 pings (half the limit, as sd_watchdog_enabled(3) advises), or
    None when the watchdog is off or meant for another process."""
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = env.get("WATCHDOG_PID")
    if usec <= 0 or (pid and pid != str(os.getpid())):
        return None
    return usec / 2e6


class Notifier:
    def __init__(self, env=None):
        env = os.environ if env is None else env
        addr = env.get("NOTIFY_SOCKET") or None
        if addr and addr.startswith("@"):
            addr = "\0" + addr[1:]              # Linux abstract socket namespace
        self.address = addr if addr and addr[0] in "/\0" else None
        self.watchdog = watchdog_interval(env) if self.address else None
        self.sent = 0
        self._sock = None
        self._timer = None
        self._loop = None

    def send(self, *assignments):
        """Send one datagram; False if there is no manager to tell or it cannot be reached."""
        if not self.address:
            return False
        if self._sock is None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)     # never stall the event loop on a busy manager
        try:
            self._sock.sendto("\n".join(assignments).encode(), self.address)
        except OSError:
            return False
        self.sent += 1
        return True

    def ready(self, loop, status=None):
        """READY=1 (with STATUS), then WATCHDOG=1 pings from ``loop`` if the unit asks for them."""
        self.send("READY=1", *(["STATUS=" + status] if status else []))
        if self.watchdog:
            self._loop = loop
            self._ping()

    def _ping(self):
        self.send("WATCHDOG=1")
        self._timer = self._loop.call_later(self.watchdog, self._ping)

    def status(self, text):
        self.send("STATUS=" + text)

    def reloading(self):
        """RELOADING=1 with the time it began (MONOTONIC_USEC, which systemd 253's notify-reload
        wants); READY=1 must follow (:meth:`reloaded`)."""
        self.send("RELOADING=1", "MONOTONIC_USEC=%d" % (time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000))

    def reloaded(self, status=None):
        self.send("READY=1", *(["STATUS=" + status] if status else []))

    def stopping(self, status=None):
        """STOPPING=1. The pings go on while the shutdown's Deletes and board flushes run."""
        self.send("STOPPING=1", *(["STATUS=" + status] if status else []))

    def close(self):
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
