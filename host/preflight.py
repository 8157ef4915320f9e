"""Checks before the daemon changes anything, and run-time errors named by their setting.

A second ikeoffloadd with the same configuration must not start beside the first: it would unlink
the live control socket, take over or share the IKE ports, and on exit flush the first one's
boards. So before the daemon touches a board, a socket or the TUN device, :func:`check` takes
`<control_socket>.lock` (flock: released by the kernel however the daemon ends), makes sure no
daemon answers on the control socket, binds the IKE ports once (no SO_REUSEADDR: a port in use is
refused), and looks at every board port: one that is missing or forbidden is left to the board's
client, which says why and retries it (host/offload/client.py); a path that is no tty, or a tty
another daemon holds (flock), is refused; a /dev/ttyUSBn name gets its /dev/serial/by-id/ name
recommended. A board's link key file must be readable by us alone and hold a key. Each refusal
is one ConfigError naming file, line and key.
"""
import errno
import fcntl
import logging
import os
import socket
import stat
import struct

from firmware.link import keyfile
from host import config as cfgmod
from host.control import ControlSocketError, answers
from host.dataplane.tun import IFF_NO_PI, IFF_TUN, TUNSETIFF, TunError
from host.ike_driver import may_use_absent_address
from host.offload import port_names

log = logging.getLogger("ikeoffloadd")

class Guard:
    """What the checks hold for the daemon's lifetime: the instance lock and the board ports'
    locks (by board name: a reload adds and releases them)."""

    def __init__(self):
        self.fds = []
        self.boards = {}

    def release_board(self, name):
        fd = self.boards.pop(name, None)
        if fd is not None:
            os.close(fd)

    def release(self):
        for fd in self.fds + list(self.boards.values()):
            os.close(fd)
        self.fds = []
        self.boards = {}


def _root():
    return os.geteuid() == 0


def check(cfg, tun=True):
    """Run every check; returns a Guard to keep until exit, or raises ConfigError."""
    guard = Guard()
    try:
        guard.fds.append(_instance_lock(cfg))
        _control_socket_free(cfg)
        _ports_free(cfg)
        if tun:
            _tun_free(cfg)
        _metrics(cfg)
        _track_file(cfg)
        for i, board in enumerate(cfg.boards):
            fd = check_board(cfg, i, board)
            if fd is not None:
                guard.boards[board.name] = fd
    except BaseException:
        guard.release()
        raise
    return guard


def check_board(cfg, i, board, port=True):
    """A board's link key and (``port``) its port, as at start and for a board a reload adds;
    returns the fd that holds the port's lock, or None."""
    _link_key(cfg, i, board)
    return _board_port(cfg, i, board) if port else None


def _metrics(cfg):
    """The OpenMetrics endpoint needs prometheus_client (the `metrics` extra) and a free port."""
    if cfg.metrics is None:
        return
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise cfg.error("daemon.metrics", "needs the prometheus_client package: pip install "
                        "'ikeoffload[metrics]' (or remove the setting)") from None
    host, port = cfgmod.metrics_address(cfg.metrics)
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            raise cfg.error("daemon.metrics", "TCP %s port %d: %s" % (host, port, e.strerror or e)) from None


def _track_file(cfg):
    """keepalived watches the track file's directory: it must exist (keepalived drops a track
    file whose directory is missing) and take our files."""
    path = cfg.ha_track_file
    if path is None:
        return
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        raise cfg.error("ha.track_file", "%s: no such directory (keepalived watches it; create it before "
                        "keepalived starts)" % directory)
    if os.path.isdir(path):
        raise cfg.error("ha.track_file", "%s is a directory, not a file" % path)
    if not os.access(directory, os.W_OK | os.X_OK):
        raise cfg.error("ha.track_file", "%s: cannot write files there (the health is written to a new "
                        "file and renamed into place)" % directory)


def _instance_lock(cfg):
    key = "daemon.control_socket"
    path = cfg.control_socket + ".lock"
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise cfg.error(key, "cannot create %s: %s" % (e.filename or path, e.strerror)) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise cfg.error(key, "ikeoffloadd (pid %s) already runs with control socket %s; this one stops "
                        "without touching it" % (pid, cfg.control_socket)) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, b"%d\n" % os.getpid(), 0)
    return fd


def _control_socket_free(cfg):
    """A daemon may hold the socket without the lock (started by another build): ask it."""
    try:
        mode = os.stat(cfg.control_socket).st_mode
    except FileNotFoundError:
        return
    except OSError as e:
        raise cfg.error("daemon.control_socket", "%s: %s" % (cfg.control_socket, e.strerror)) from None
    if not stat.S_ISSOCK(mode):
        raise cfg.error("daemon.control_socket", "%s exists and is not a socket: the daemon will not replace it"
                        % cfg.control_socket)
    if not answers(cfg.control_socket):
        return                           # stale: the control server replaces it
    raise cfg.error("daemon.control_socket", "a daemon answers on %s already; this one stops without "
                    "touching it" % cfg.control_socket)


def _ports_free(cfg):
    for addr in cfg.listen_addrs:
        family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        for key, port in (("ike.port", cfg.ike_port), ("ike.natt_port", cfg.natt_port)):
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                if family == socket.AF_INET6:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)    # as the daemon binds it
                if cfg.ha:      # the virtual address is here only while keepalived says MASTER
                    may_use_absent_address(s)
                try:
                    s.bind((addr, port))
                except OSError as e:
                    raise bind_error(cfg, key, port, e, addr) from None


def bind_error(cfg, key, port, e, addr=None):
    """The ConfigError for a failed bind of the IKE port ``key`` on ``addr`` (a listen address)."""
    addr = addr or cfg.listen
    where = "UDP %s port %d" % (addr, port)
    if e.errno == errno.EADDRNOTAVAIL:
        return cfg.error("daemon.listen", "%s is not an address of this host (%s)" % (addr, e.strerror))
    if e.errno == errno.EADDRINUSE:
        return cfg.error(key, "%s is in use by another program (charon? another ikeoffloadd? "
                         "`ss -ulpn sport = :%d` names it)" % (where, port))
    if e.errno == errno.EACCES and not _root():
        return cfg.error(key, "%s: ports below 1024 need root or CAP_NET_BIND_SERVICE" % where)
    return cfg.error(key, "%s: %s" % (where, e.strerror or e))


def _tun_free(cfg):
    """An interface of that name that is no TUN device, or one a process holds, cannot be ours."""
    if not os.path.exists("/sys/class/net/%s" % cfg.tun):
        return
    if not os.path.exists("/sys/class/net/%s/tun_flags" % cfg.tun):
        raise cfg.error("dataplane.tun", "an interface %s exists and is not a TUN device: choose another name"
                        % cfg.tun)
    if _tun_busy(cfg.tun):
        raise cfg.error("dataplane.tun", "TUN device %s is in use (another ikeoffloadd? another program?): "
                        "choose another name" % cfg.tun)


def _tun_busy(name):
    """Attaching to a single-queue TUN device a process holds fails with EBUSY."""
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
        return False
    except OSError as e:
        return e.errno == errno.EBUSY
    finally:
        os.close(fd)


def _link_key(cfg, i, board):
    """The board's link key file must be there, ours alone, and a key (firmware/link/keyfile.py)."""
    if board.link_key is not None:
        try:
            keyfile.read(board.link_key)
        except keyfile.KeyFileError as e:
            raise cfg.error("board[%d].link_key" % i, str(e)) from None


def runtime_error(cfg, e):
    """A failure of the daemon's start as file:line: key: message, where a setting explains it."""
    if isinstance(e, TunError):
        return cfg.error(e.key, str(e))
    if isinstance(e, ControlSocketError):
        return cfg.error("daemon.control_socket", str(e))
    if isinstance(e, OSError) and e.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):
        return bind_error(cfg, "ike.port", cfg.ike_port, e)
    return "%s: %s" % (cfg.path, e)


def port_problem(port, err):
    """Why a board port cannot be opened, in words (host/offload/port_names.py)."""
    return port_names.port_problem(port, err, root=_root())


def _board_port(cfg, i, board):
    """Look at a board's port before the daemon opens it; returns the fd that holds its lock."""
    port = board.port
    if not os.path.isabs(port):
        return None                       # a URL (socket://, ftdi://): nothing to look at here
    key = "board[%d].port" % i
    try:
        st = os.stat(port)
    except OSError:
        return None                       # the board's client says why and retries it (host/offload/client.py)
    if not stat.S_ISCHR(st.st_mode):
        raise cfg.error(key, "%s is not a serial device but a %s" % (
            port, "directory" if stat.S_ISDIR(st.st_mode) else "regular file" if stat.S_ISREG(st.st_mode)
            else "special file"))
    try:
        fd = os.open(port, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None                       # as above: said with its cause by the client, retried
    if not os.isatty(fd):
        os.close(fd)
        raise cfg.error(key, "%s is a character device but not a tty: no serial port" % port)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise cfg.error(key, "%s is held by another ikeoffloadd (or a program that locks it)" % port) from None
    advice = port_names.by_id_advice(port)
    if advice:
        log.warning("board %s (%s): %s", board.name, key, advice)
    return fd
