"""The simulated board as a user meets it: `inv sim`, a pty any serial tool can open, socket://,
resets that keep the device path, and a UART-rate throttle."""
import os
import signal
import subprocess
import sys
import time

import pytest
import serial

from firmware.link import auth as la
from firmware.link import frame as fr
from firmware.link import keyfile
from firmware.link import messages as m

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=ROOT)


class Link:
    """The host's end of the sim's authenticated link, frame by frame (firmware/link/auth.py)."""

    def __init__(self, key_path):
        self.auth = la.HostAuth(keyfile.read(key_path))
        self.dec = fr.FrameDecoder(65535, auth=True)
        self.nonce = None

    def frame(self, type, seq, flags=0, body=b""):
        if type == m.HELLO:
            self.nonce = self.auth.new_nonce()
            body = body + self.nonce
        if type == m.SA_ADD:
            flags |= fr.FLAG_ENC
        return self.auth.seal(type, seq, flags, body)

    def feed(self, data):
        out = []
        for f in self.dec.feed(data):
            f = self.auth.open(f, self.nonce if f.type == m.HELLO and f.flags & fr.FLAG_REPLY else None)
            if f is not None:
                out.append(f)
        return out


def start(args):
    """The sim's first two lines, and a Link made with the key its third names."""
    p = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env=ENV, cwd=ROOT)
    first = p.stdout.readline()
    second = p.stdout.readline()
    third = p.stdout.readline()
    assert third.startswith("link-key: "), third
    return p, first, second, Link(third.split(": ", 1)[1].strip())


def stop(p):
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(5)
    except subprocess.TimeoutExpired:
        p.kill()
        raise AssertionError("simulator ignored SIGTERM") from None


def exchange(link, port, frames, want, timeout=2.0):
    port.write(b"".join(frames))
    got = []
    end = time.monotonic() + timeout
    while len([f for f in got if f.flags & fr.FLAG_REPLY]) < want and time.monotonic() < end:
        got += link.feed(port.read(4096))
    return got


def hello(link, port, seq=1):
    got = exchange(link, port, [link.frame(m.HELLO, seq, 0, m.encode_hello_request(b"testtest"))], 1)
    replies = [f for f in got if f.flags & fr.FLAG_REPLY]
    assert replies, got
    return m.Hello.decode(replies[0].body[1:])


def test_inv_sim_prints_a_pty_that_pyserial_and_miniterm_open():
    p, first, second, link = start([sys.executable, "-m", "invoke", "sim"])
    try:
        assert first.startswith("board: /dev/pts/"), first
        assert second.startswith("control: ")
        dev = first.split()[1]
        with serial.Serial(dev, 921600, timeout=0.2) as s:
            h = hello(link, s)
            assert h.board_id == "sim"
        # miniterm (it wants a terminal of its own) opens it, stays up, and quits on Ctrl-]
        console, console_slave = os.openpty()
        mt = subprocess.Popen([sys.executable, "-m", "serial.tools.miniterm", dev, "921600", "--raw", "-q"],
                              stdin=console_slave, stdout=console_slave, stderr=subprocess.PIPE, env=ENV)
        time.sleep(1.0)
        assert mt.poll() is None, mt.stderr.read()
        os.write(console, b"\x1d")
        assert mt.wait(5) == 0
        os.close(console)
        os.close(console_slave)
        with serial.Serial(dev, 921600, timeout=0.2) as s:    # still there after a tool left
            assert hello(link, s, 2).board_id == "sim"
    finally:
        stop(p)


def test_reset_by_signal_keeps_the_path_and_changes_the_boot_id():
    p, first, _, link = start([sys.executable, "-m", "firmware.sim"])
    try:
        dev = first.split()[1]
        with serial.Serial(dev, timeout=0.2) as s:
            a = hello(link, s).boot_id
            p.send_signal(signal.SIGUSR1)
            events = []
            end = time.monotonic() + 2
            while not events and time.monotonic() < end:
                events = [f for f in link.feed(s.read(4096)) if f.flags & fr.FLAG_EVENT]
            assert events and events[0].type == m.HELLO
            b = m.Hello.decode(events[0].body).boot_id
            assert a != b and hello(link, s, 3).boot_id == b
            assert os.path.exists(dev)
    finally:
        stop(p)


def test_socket_mode():
    p, first, _, link = start([sys.executable, "-m", "firmware.sim", "--socket", "127.0.0.1:0"])
    try:
        assert first.startswith("board: socket://127.0.0.1:"), first
        url = first.split()[1]
        with serial.serial_for_url(url, timeout=0.2) as s:
            assert hello(link, s).max_sas > 0
        with serial.serial_for_url(url, timeout=0.2) as s:   # a second host session later
            assert hello(link, s, 5).max_sas > 0
    finally:
        stop(p)


def test_reset_every():
    p, first, _, link = start([sys.executable, "-m", "firmware.sim", "--reset-every", "0.3"])
    try:
        with serial.Serial(first.split()[1], timeout=0.1) as s:
            boots = set()
            end = time.monotonic() + 1.5
            while time.monotonic() < end:
                for f in link.feed(s.read(4096)):
                    if f.flags & fr.FLAG_EVENT and f.type == m.HELLO:
                        boots.add(m.Hello.decode(f.body).boot_id)
            assert 3 <= len(boots) <= 6
    finally:
        stop(p)


@pytest.mark.parametrize("baud", [115200, 921600])
def test_baud_throttle_shows_uart_limits(baud):
    """Stats replies of ~64 KB in total must take about bytes / (baud / 10)."""
    p, first, _, link = start([sys.executable, "-m", "firmware.sim", "--baud", str(baud)])
    try:
        with serial.Serial(first.split()[1], timeout=0.05) as s:
            hello(link, s)
            spec = m.SaSpec(0x1000, 0, m.ENCR_AES_GCM_16, b"k" * 20)
            reqs = []
            for i in range(40):
                spec.spi = 0x1000 + i
                reqs.append(link.frame(m.SA_ADD, 10 + i, 0, spec.encode()))
            exchange(link, s, reqs, 40, timeout=10)
            t0 = time.monotonic()
            n = 0
            want = 25 if baud > 200000 else 4
            got = exchange(link, s, [link.frame(m.SA_STATS, 100 + i, fr.FLAG_NOCACHE, m.encode_stats_request())
                               for i in range(want)], want, timeout=30)
            took = time.monotonic() - t0
            n = sum(len(f.body) + 14 for f in got)
            rate = n / took
            assert 0.6 * baud / 10 <= rate <= 1.1 * baud / 10, (rate, baud / 10)
    finally:
        stop(p)


@pytest.mark.parametrize("profile", ["esp32-devkitc", "rp2040-pico-spi"])
def test_the_sim_stands_in_for_a_boards_transforms_link_and_cpu(profile):
    """`--profile` makes the sim what that board would be: its backend's transforms in HELLO, its
    link's rate by default, its CPU's time per packet (firmware/profiles.py cpu_costs)."""
    from firmware import profiles
    from firmware.tests import espdata as d
    from firmware.tests.espdata import A1, A2, det, ipv4

    prof = profiles.load(profile)
    p, first, _, link = start([sys.executable, "-m", "firmware.sim", "--profile", profile])
    try:
        with serial.Serial(first.split()[1], timeout=0.05) as port:
            h = hello(link, port)
            assert {t.backend for t in h.transforms} == {"cryptolib"}
            fast = {t.key() for t in h.transforms if t.speed == m.SPEED_FAST}
            assert fast == profiles.fast_transforms(prof)                  # AES-CBC + HMAC; GCM is slow
            t = (m.ENCR_AES_CBC, 256, m.AUTH_HMAC_SHA2_256_128)
            spec = d.spec(0x6000, m.DIR_OUT, m.ENCR_AES_CBC, 256, flags=m.SAF_UDP_ENCAP, src=(A1, 4500),
                          dst=(A2, 4500))
            got = exchange(link, port, [link.frame(m.SA_ADD, 2, 0, spec.encode())], 1)
            assert m.SadReply.decode([f for f in got if f.flags & fr.FLAG_REPLY][0].body).status == m.OK
            pkt = ipv4(A1, A2, 17, d.udp(1, 2, det(1372)))
            req = link.frame(m.ENCRYPT, 3, fr.FLAG_NOCACHE, m.encode_encrypt_request([(0x6000, pkt)] * 2))
            t0 = time.monotonic()
            got = exchange(link, port, [req], 1, timeout=5)
            took = time.monotonic() - t0
            st, items = m.decode_encrypt_reply([f for f in got if f.flags & fr.FLAG_REPLY][0].body)
            assert st == m.OK and [s for s, _ in items] == [m.P_OK] * 2
            # never faster than the board: 2 packets of CPU time, and the frame's bytes on the line
            cpu = 2 * profiles.packet_time(profiles.cpu_costs(prof), t, len(pkt))
            wire = (len(req) + sum(len(e) for _, e in items)) / profiles.link_rate(prof)
            assert took >= cpu + (wire if profile.startswith("esp32") else 0) * 0.9, (took, cpu, wire)
            assert took <= 3 * (cpu + wire) + 0.3, (took, cpu, wire)
    finally:
        stop(p)


def sim_clock(monkeypatch, t):
    """The sim's clock (its `time.monotonic`), at `t` and moved by the test: `Clock.t += s`."""
    from firmware import sim as simmod

    class Clock:
        @classmethod
        def monotonic(cls):
            return cls.t

    Clock.t = t
    monkeypatch.setattr(simmod, "time", Clock)
    return Clock


@pytest.mark.parametrize("step", [0.0005, 0.005])
def test_a_cpu_bound_board_answers_each_frame_as_it_finishes_it(tmp_path, monkeypatch, step):
    """The CPU model (rp2040-pico-spi's, crypto-bound): four one-packet ENCRYPT frames queued at once
    are answered one CPU time apart, each reply leaving while the board works on the next (the
    firmware's loop hands a finished reply to the line between packets). Replies held until the
    queue runs dry would keep the host's window full of answered frames and the board short of
    work. The sim runs on a clock the test moves `step` at a time: a sim that wakes up late (5 ms
    steps, as on a loaded machine) still starts each packet when the last one ended, as a chip
    would, so its wake-up delays do not take the board's capacity."""
    from firmware import profiles
    from firmware import sim as simmod
    from firmware.tests import espdata as d
    from firmware.tests.espdata import A1, A2, det, ipv4

    Clock = sim_clock(monkeypatch, 1000.0)
    # rp2040-pico-spi's link rate and CPU on the `sim` profile's board (its backend is CPython's:
    # a cryptolib board in this process would leave the sim's cryptolib behind for other tests)
    full = profiles.load("rp2040-pico-spi")
    profile = profiles.board_config(profiles.load("sim"))
    key_path = str(tmp_path / "link.key")
    profile["link_key"], _ = keyfile.ensure(key_path)
    sim = simmod.Simulator(profile, rate=profiles.link_rate(full), costs=profiles.cpu_costs(full))
    link = Link(key_path)
    replies = []

    def run(seconds):
        end = Clock.t + seconds
        while Clock.t < end:
            Clock.t += step
            sim.on_tick()
            while sim.pending_output():
                chunk = sim.next_output(1 << 16)
                n = sim.tx_pacer.allow(len(chunk))
                if not n:
                    break
                sim.sent(n)
                replies.extend((Clock.t, f) for f in link.feed(chunk[:n]) if f.flags & fr.FLAG_REPLY)

    sim.on_input(link.frame(m.HELLO, 1, 0, m.encode_hello_request(b"testtest")))
    run(0.05)
    spec = d.spec(0x6000, m.DIR_OUT, m.ENCR_AES_CBC, 256, flags=m.SAF_UDP_ENCAP, src=(A1, 4500), dst=(A2, 4500))
    sim.on_input(link.frame(m.SA_ADD, 2, 0, spec.encode()))
    run(0.05)
    assert [f.type for _, f in replies] == [m.HELLO, m.SA_ADD]
    pkt = ipv4(A1, A2, 17, d.udp(1, 2, det(1372)))
    replies.clear()
    t0 = Clock.t
    sim.on_input(b"".join(link.frame(m.ENCRYPT, 10 + i, fr.FLAG_NOCACHE, m.encode_encrypt_request([(0x6000, pkt)]))
                          for i in range(4)))
    run(0.2)
    assert [f.seq for _, f in replies] == [10, 11, 12, 13]
    cpu = profiles.packet_time(profiles.cpu_costs(full), (m.ENCR_AES_CBC, 256, m.AUTH_HMAC_SHA2_256_128), len(pkt))
    wire = 1600 / profiles.link_rate(full)                   # one reply frame on the SPI link
    for k, (t, _) in enumerate(replies, 1):
        # late by at most a step to notice the input, one to notice the end, one for the line
        assert k * cpu <= t - t0 <= k * cpu + wire + 3 * step + 0.002, (k, t - t0, cpu)
    # and the lateness does not add up: one CPU time apart, give or take a step
    assert replies[-1][0] - replies[0][0] <= 3 * cpu + step + 0.001


def test_the_line_pacer_gives_back_time_a_late_wake_up_took_but_never_bursts_from_idle(monkeypatch):
    """The sim's line (Pacer): at 92,160 bytes/s, bytes that waited all along get the line's time
    since the last call even if this process wakes up 10 ms late; a line that was idle gets ~2 ms."""
    from firmware import sim as simmod

    Clock = sim_clock(monkeypatch, 50.0)
    p = simmod.Pacer(92160)
    Clock.t += 1.0                                   # idle for a second
    assert p.allow(10_000) == p.burst == 184         # ~2 ms, not a second's worth
    Clock.t += 0.010                                 # woke up 10 ms later, bytes still waiting
    assert p.allow(10_000) == 921                    # the 10 ms of line they were owed
    Clock.t += 0.010
    assert p.allow(100) == 100                       # all sent: the line goes idle
    Clock.t += 0.010
    assert p.allow(10_000) <= p.burst + 1            # from idle, ~2 ms again
