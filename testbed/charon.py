"""strongSwan charon (5.9.x, Debian) as a test peer inside a network namespace, driven with the
PyPI ``vici`` package.

What this needs on this kernel and why (measured, see the project's FACTS):
* ``kernel-libipsec`` (userspace ESP over a TUN device ``ipsec0``) must be loaded *before*
  ``kernel-netlink``: the first kernel-ipsec provider wins, and the kernel here has no ESP.
  libipsec always fakes NAT detection, so ESP is always UDP-encapsulated on port 4500.
* ``/usr/lib/ipsec/charon`` writes a compiled-in ``/run/charon.pid`` and refuses to start if it
  exists, so each instance runs in a private mount namespace with its own directory bound on /run.
* ``charon.threads`` must be >= 10 or vici never answers with this plugin set.
* vici's ``initiate``/``terminate`` are generators: nothing happens until they are consumed.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import vici

CHARON = "/usr/lib/ipsec/charon"
LIBIPSEC_PLUGIN = "/usr/lib/ipsec/plugins/libstrongswan-kernel-libipsec.so"
ML_PLUGIN = "/usr/lib/ipsec/plugins/libstrongswan-ml.so"       # strongSwan >= 6.0: ML-KEM
PLUGINS = ("random nonce openssl aes sha1 sha2 hmac gcm chapoly curve25519 gmp kdf pem pkcs1 pkcs8 pubkey x509 "
           + ("ml " if os.path.exists(ML_PLUGIN) else "") + "kernel-libipsec kernel-netlink socket-default vici")


def available() -> bool:
    return os.path.exists(CHARON) and os.path.exists(LIBIPSEC_PLUGIN)


class Charon:
    """One charon in namespace ``netns``, state under ``statedir`` (keep the path short: the vici
    socket path must fit a unix socket address)."""

    def __init__(self, netns: str, statedir, port: int = 500, natt_port: int = 4500, threads: int = 16,
                 loglevel: int = 1, reuse_ikesa: bool = True, half_open: int | None = None,
                 ikesa_table: tuple | None = None, retransmit_timeout: float = 1.0,
                 retransmit_tries: int = 3, cookie_threshold: int | None = None,
                 keep_alive: int | None = None, log_groups: dict | None = None):
        self.netns = netns
        self.dir = Path(statedir)
        self.port, self.natt_port = port, natt_port
        self.threads, self.loglevel = threads, loglevel
        self.reuse_ikesa = reuse_ikesa
        self.half_open = half_open
        self.cookie_threshold = cookie_threshold
        self.keep_alive = keep_alive        # NAT-keepalive interval, whole seconds (charon: 20)
        self.log_groups = log_groups or {}  # per-group log levels, e.g. {"ike": 4}: its derived keys
        self.ikesa_table = ikesa_table
        self.retransmit = (retransmit_timeout, retransmit_tries)
        self.rsa_pss = False            # RFC 7427 signatures with RSASSA-PSS (charon.rsa_pss)
        self.proc = None
        self.vici_path = self.dir / "charon.vici"
        self.log_path = self.dir / "charon.log"

    def _config(self) -> str:
        lines = [
            "charon {",
            f"  port = {self.port}",
            f"  port_nat_t = {self.natt_port}",
            "  load_modular = no",
            f"  load = {PLUGINS}",
            f"  threads = {self.threads}",
            f"  reuse_ikesa = {'yes' if self.reuse_ikesa else 'no'}",
            f"  retransmit_timeout = {self.retransmit[0]}",
            f"  retransmit_tries = {self.retransmit[1]}",
            f"  rsa_pss = {'yes' if self.rsa_pss else 'no'}",
            "  install_routes = yes",
            "  routing_table = 220",
            "  routing_table_prio = 220",
        ]
        if self.half_open is not None:
            lines += [f"  block_threshold = {self.half_open}", f"  cookie_threshold = {self.half_open}",
                      f"  cookie_threshold_ip = {self.half_open}", f"  init_limit_half_open = {self.half_open}"]
        if self.cookie_threshold is not None:
            lines += [f"  cookie_threshold = {self.cookie_threshold}"]
        if self.keep_alive is not None:
            lines += [f"  keep_alive = {self.keep_alive}s"]
        if self.ikesa_table is not None:
            lines += [f"  ikesa_table_size = {self.ikesa_table[0]}",
                      f"  ikesa_table_segments = {self.ikesa_table[1]}"]
        lines += [
            "  syslog {", "    daemon {", "      default = -1", "    }", "  }",
            "  filelog {", "    main {", f"      path = {self.log_path}", "      time_format = %H:%M:%S",
            "      ike_name = yes", "      append = no", "      flush_line = yes",
            f"      default = {self.loglevel}"] + [f"      {g} = {v}" for g, v in self.log_groups.items()] + [
            "    }", "  }",
            "  plugins {", "    vici {", f"      socket = unix://{self.vici_path}", "    }", "  }",
            "}",
        ]
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 15.0):
        self.dir.mkdir(parents=True, exist_ok=True)
        run = self.dir / "run"
        run.mkdir(exist_ok=True)
        for p in (run / "charon.pid", self.vici_path):
            if p.exists():
                p.unlink()
        conf = self.dir / "strongswan.conf"
        conf.write_text(self._config())
        env = dict(os.environ, STRONGSWAN_CONF=str(conf))
        out = open(self.dir / "stdout.log", "wb")
        # private mount namespace: bind our run/ over /run so the pid file is ours alone
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, "unshare", "--mount", "--propagation", "private",
             "sh", "-c", 'mount --bind "$1" /run && exec "$2"', "charon", str(run), CHARON],
            env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        out.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"charon exited during start:\n{self.log_tail()}")
            try:
                self.session().version()
                return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"charon: no vici answer after {timeout}s:\n{self.log_tail()}")
            time.sleep(0.05)

    def set_rsa_pss(self, on: bool):
        """Sign with RSASSA-PSS from now on (or not): rewrite strongswan.conf, reload-settings."""
        self.rsa_pss = on
        (self.dir / "strongswan.conf").write_text(self._config())
        self.session().reload_settings()

    def session(self, timeout: float | None = 30.0) -> vici.Session:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if timeout is not None:
            s.settimeout(timeout)
        s.connect(str(self.vici_path))
        return vici.Session(s)

    def stop(self, grace: float = 5.0):
        p, self.proc = self.proc, None
        if p is None or p.poll() is not None:
            return
        os.kill(p.pid, signal.SIGTERM)
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            os.kill(p.pid, signal.SIGKILL)
            p.wait(5)

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            try:
                return (self.dir / "stdout.log").read_text(errors="replace")[-4000:]
            except OSError:
                return "(no log)"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    # -------------------------------------------------------------- vici helpers

    def load_conn(self, name: str, conn: dict):
        self.session().load_conn({name: conn})

    def unload_conn(self, name: str):
        self.session().unload_conn({"name": name})

    def load_psk(self, secret: str, owners: list[str], key_id: str = "psk"):
        self.session().load_shared({"id": key_id, "type": "IKE", "data": secret, "owners": owners})

    def load_key(self, pem: bytes, kind: str = "ecdsa"):
        self.session().load_key({"type": kind, "data": pem})

    def load_ca(self, pem: bytes):
        self.session().load_cert({"type": "X509", "flag": "CA", "data": pem})

    def initiate(self, child: str | None, ike: str, timeout_ms: int = 10000):
        msg = {"ike": ike, "timeout": timeout_ms, "init-limits": "no"}
        if child:
            msg["child"] = child
        return list(self.session().initiate(msg))

    def terminate(self, ike: str | None = None, child: str | None = None, timeout_ms: int = 10000):
        msg = {"timeout": timeout_ms}
        if ike:
            msg["ike"] = ike
        if child:
            msg["child"] = child
        return list(self.session().terminate(msg))

    def list_sas(self, ike: str | None = None) -> list[dict]:
        sess = self.session()
        out = []
        for item in sess.list_sas({"ike": ike} if ike else {}):
            for name, sa in item.items():
                sa = dict(sa)
                sa["_name"] = name.decode() if isinstance(name, bytes) else name
                out.append(sa)
        return out
