"""The router's health as keepalived's ``track_file`` reads it: ``0`` healthy, ``1`` not.

keepalived watches the file's directory with inotify and reads the file as soon as it is closed
after writing or renamed into place; with ``weight 0`` a non-zero value puts the VRRP instance in
FAULT at once (keepalived.conf(5), "Track files"), where its track script is only run every whole
second. So the daemon tells keepalived the moment its last ready board has been gone for longer
than a reset takes, and the moment one is ready again. The file is replaced atomically (a
temporary file in the same directory, then rename(2)): keepalived never reads a half-written
value, and a deleted file, which keepalived takes for 0, never appears. A daemon killed with
SIGKILL cannot write it; keepalived's track script (`ikeoffloadctl ha check`) still catches that.
"""
import logging
import os
import tempfile

log = logging.getLogger("ikeoffloadd")

HEALTHY, UNHEALTHY = 0, 1


class HealthFile:
    """Writes the health to ``path`` when it changes (and the first time, whatever it is)."""

    def __init__(self, path: str):
        self.path = path
        self.value: int | None = None      # what the file holds, as far as we wrote it
        self.writes = 0

    def publish(self, healthy: bool, why: str = "") -> bool:
        """Write 0 or 1 unless the file holds it already; returns whether it was written. An
        error is logged and changes nothing (the next call tries again): the track script still
        judges the router."""
        value = HEALTHY if healthy else UNHEALTHY
        if value == self.value:
            return False
        directory, name = os.path.split(self.path)
        tmp = None
        try:
            fd, tmp = tempfile.mkstemp(prefix="." + name + ".", dir=directory)
            with os.fdopen(fd, "w") as f:
                f.write("%d\n" % value)
            os.chmod(tmp, 0o644)                  # keepalived may run as another user
            os.replace(tmp, self.path)            # IN_MOVED_TO: keepalived reads it now
        except OSError as e:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
            log.error("HA: cannot write the health keepalived tracks to %s (%s); its track script "
                      "still judges this router, each second", self.path, e.strerror or e)
            self.value = None
            return False
        self.value = value
        self.writes += 1
        log.log(logging.INFO if healthy else logging.WARNING, "HA: %s for keepalived (%s: %d)%s",
                "healthy" if healthy else "unhealthy", self.path, value, ": " + why if why and not healthy else "")
        return True
