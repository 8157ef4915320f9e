"""What a board port's name and its open errors tell the router's owner: why a port cannot be
opened, in words, and the /dev/serial/by-id/ name that stays with the device.

Linux numbers USB serial devices (/dev/ttyUSB0, /dev/ttyACM0) in the order they appear: after a
replug or a reboot with another adapter present, the configured name can be another device, and
the daemon would speak its link protocol to it. udev's /dev/serial/by-id/ links carry the
adapter's vendor, model and serial number, so they keep naming the same board.
"""
import errno
import os
import re

BY_ID = "/dev/serial/by-id"
RENUMBERED = re.compile(r"/dev/tty(USB|ACM)\d+")


def renumbered(port):
    """Is ``port`` a name the kernel hands out in plug order (/dev/ttyUSBn, /dev/ttyACMn)?"""
    return RENUMBERED.fullmatch(port) is not None


def by_id_names():
    """The names under /dev/serial/by-id/ now (none when no USB serial device is plugged in)."""
    try:
        return sorted(os.listdir(BY_ID))
    except OSError:
        return []


def by_id_name(port):
    """The /dev/serial/by-id/ name of the device at ``port`` now, or None."""
    target = os.path.realpath(port)
    for name in by_id_names():
        path = os.path.join(BY_ID, name)
        if os.path.realpath(path) == target:
            return path
    return None


def by_id_advice(port):
    """For a renumbered name: what to configure instead (the device's by-id name when it is
    there); None for any other port."""
    if not renumbered(port):
        return None
    alias = by_id_name(port) if os.path.exists(port) else None
    if alias:
        return 'configure port = "%s" instead: %s may name another device after a replug or reboot' % (alias, port)
    return ("%s may name another device after a replug or reboot: configure the board's name under %s/ "
            "(`ls -l %s/` shows which is which)" % (port, BY_ID, BY_ID))


def os_errno(exc):
    """The errno behind an exception, looking through the ones it wraps (pyserial wraps
    termios.error, whose args are (errno, text), in a SerialException without one)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        code = getattr(exc, "errno", None)
        if isinstance(code, int):
            return code
        args = getattr(exc, "args", ())
        if len(args) == 2 and isinstance(args[0], int):
            return args[0]
        exc = exc.__cause__ or exc.__context__
    return None


def port_problem(port, err, root=None):
    """Why ``port`` cannot be opened, in words, from the OSError (or its errno) ``err``.
    ``root``: whether we run as root (default: asked)."""
    code = err if isinstance(err, int) or err is None else os_errno(err)
    root = os.geteuid() == 0 if root is None else root
    if code == errno.ENOENT:
        present = by_id_names()
        now = "present now: " + ", ".join(present) if present else "none is present now"
        if port.startswith(BY_ID + "/"):
            return "no such device (not plugged in? %s under %s/)" % (now, BY_ID)
        return "no such device (not plugged in, or renumbered: name it by %s/...; %s)" % (BY_ID, now)
    if code in (errno.EACCES, errno.EPERM):
        return "permission denied (%s; the systemd unit's DeviceAllow= must allow it too)" % (
            "run as root or in group dialout" if not root else "refused although root: a device policy")
    if code == errno.ENOTTY:
        return "not a tty: no serial device"
    if code == errno.EISDIR:
        return "a directory, not a serial device"
    if code == errno.EBUSY:
        return "busy: another program holds it exclusively"
    if code == errno.ENXIO or code == errno.ENODEV:
        return "no device behind the name (unplugged while open?)"
    if code is not None:
        return os.strerror(code)
    return str(err)
