"""IKE SA setup rate: our initiator <-> our responder next to charon <-> charon, same machine, same run.

Both pairs run in the same two fresh network namespaces joined by veth (192.0.2.1 <-> 192.0.2.2),
each side its own process (charon: two daemons; ours: two Python processes with the asyncio UDP
driver), so both sides' crypto shares this machine's cores exactly as for charon. The suite is
IKE aes256gcm16-prfsha256-x25519 with one Child SA (ESP aes256gcm16), PSK, NAT-T (libipsec forces
UDP encapsulation for charon; ours floats the same way). The initiator keeps a window of ``-c``
IKE_SA setups in flight (charon: vici initiate with timeout -1 and child-updown events, as the
strongSwan recipe measured it: reuse_ikesa=no, half-open thresholds raised, ikesa_table 4096/16,
log level 0). Our Child SAs are accepted at once by the driver (no board yet); charon installs its
own in libipsec.

Beside them, in the same interleaved runs, ours with the post-quantum hybrid suite
aes256gcm16-prfsha256-x25519-ke1_mlkem768 (RFC 9370: ML-KEM-768 in one IKE_INTERMEDIATE exchange
after IKE_SA_INIT, its 1184-byte key fragmented at 1280 bytes, RFC 7383); strongSwan 5.9 has no
ML-KEM, so there is no charon row for it.

Usage (root): python -m bench.ike [-n 2000] [-c 2,8,32] [--only ours|charon|hybrid]
Prints a table and writes bench/results/ike.json.
"""

from __future__ import annotations

import argparse
import gc
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "ike.json"
IKE, ESP = "aes256gcm16-prfsha256-x25519", "aes256gcm16"
HYBRID = "aes256gcm16-prfsha256-x25519-ke1_mlkem768"
PSK = "bench-psk-0123456789abcdef-0123456789"
A, B = "192.0.2.1", "192.0.2.2"
A_IN, B_IN = "198.51.100.1", "203.0.113.1"
GOALS = {"ours_at_least_charons_rate": "IKE SA + Child SA setups per second, ours / charon's on the same "
                                       "machine in the same run (medians) >= 1",
         "hybrid_at_least_half_classical": "ours with x25519 + ML-KEM-768 (RFC 9370) / ours with x25519, setups "
                                           "per second (medians, same run) >= 0.5"}


# ---------------------------------------------------------------- our side (worker processes)


def _our_conns(role, ike=IKE):
    from host.ike.config import parse_connections

    me, peer, mid, pid, mts, pts = (
        (A, B, "a.bench", "b.bench", A_IN, B_IN)
        if role == "initiator"
        else (B, A, "b.bench", "a.bench", B_IN, A_IN)
    )
    return parse_connections(
        {
            "gw": {
                "local_addrs": [me],
                "remote_addrs": [peer],
                "psk": PSK,
                "proposals": [ike],
                "initial_contact": False,
                "local": {"auth": "psk", "id": mid},
                "remote": {"auth": "psk", "id": pid},
                "children": {
                    "net": {"local_ts": [f"{mts}/32"], "remote_ts": [f"{pts}/32"], "esp_proposals": [ESP]}
                },
            }
        }
    )


def worker(role: str, n: int, window: int, ike: str = IKE):
    """Runs inside a namespace (``ip netns exec``). The responder serves until stdin closes; the
    initiator establishes ``n`` IKE SAs (each with a Child SA) keeping ``window`` in flight."""
    from host.ike_driver import IkeUdpEndpoint
    from host.ike.engine import EngineSettings, IkeEngine
    from host.ike.events import ChildSaInstall, ChildSaUp, IkeSaDown
    from host.ike.proposals import OffloadCapabilities

    # A process holding thousands of SAs should not run full collections every few hundred
    # allocations (CPython's default thresholds); recommended for the daemon as well.
    gc.set_threshold(20_000, 20, 20)
    caps = OffloadCapabilities.from_proposals([ESP])
    settings = EngineSettings(max_half_open=65536, max_half_open_per_ip=65536, half_open_timeout=60.0,
                              cookie_threshold=0, cookie_threshold_ip=0,   # setup rate, not DoS defence
                              max_initiating_per_peer=0, max_initiating=0)  # the window is -c, as for charon
    engine = IkeEngine(_our_conns(role, ike), caps, settings=settings)
    state = {"up": 0, "failed": 0}

    async def main():
        loop = asyncio.get_running_loop()
        done = asyncio.Event()
        sem = asyncio.Semaphore(window)
        ep = None

        def on_event(ev):
            if isinstance(ev, ChildSaInstall):
                ep.child_sa_installed(ev.handle, True)
            elif isinstance(ev, ChildSaUp):
                state["up"] += 1
                if role == "initiator":
                    sem.release()
                    if state["up"] + state["failed"] >= n:
                        done.set()
            elif isinstance(ev, IkeSaDown) and not ev.established:
                state["failed"] += 1
                if role == "initiator":
                    sem.release()
                    if state["up"] + state["failed"] >= n:
                        done.set()

        me = A if role == "initiator" else B
        ep = await IkeUdpEndpoint(engine, me, on_event=on_event).start()
        if role == "responder":
            print("ready", flush=True)
            await loop.run_in_executor(None, sys.stdin.read)
            ep.close()
            return None
        c0 = os.times()
        t0 = loop.time()
        for _ in range(n):
            await sem.acquire()
            ep.initiate("gw")
        try:
            await asyncio.wait_for(done.wait(), timeout=max(60.0, n / 50))
        except asyncio.TimeoutError:
            pass
        elapsed = loop.time() - t0
        c1 = os.times()
        ep.close()
        return {
            "established": state["up"],
            "failed": state["failed"],
            "elapsed": elapsed,
            "cpu": (c1.user - c0.user) + (c1.system - c0.system),
            "stats": dict(engine.stats),
        }

    c0 = os.times()
    prof_path = os.environ.get("BENCH_PROFILE")
    if prof_path:
        import cProfile

        prof = cProfile.Profile()
        res = prof.runcall(asyncio.run, main())
        prof.dump_stats(f"{prof_path}.{role}")
    else:
        res = asyncio.run(main())
    if res is None:
        c1 = os.times()
        res = {
            "cpu": (c1.user - c0.user) + (c1.system - c0.system),
            "up": state["up"],
            "stats": dict(engine.stats),
        }
    print(json.dumps(res), flush=True)


def _last_json(text: str) -> dict:
    return json.loads([ln for ln in text.splitlines() if ln.startswith("{")][-1])


def run_ours(bed, n, window, ike=IKE):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    py = sys.executable
    spy = os.environ.get("BENCH_PYSPY")  # e.g. /tmp/spy: sample both workers with py-spy
    wrap = (
        (lambda role: ["py-spy", "record", "-r", "200", "-f", "raw", "-o", f"{spy}.{role}", "--", py])
        if spy
        else (lambda role: [py])
    )
    resp = subprocess.Popen(
        ["ip", "netns", "exec", bed.ns_b, *wrap("responder"), "-m", "bench.ike", "--worker", "responder",
         "--ike", ike],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = resp.stdout.readline()
        while line and line.strip() != "ready":  # (py-spy, when used, talks first)
            line = resp.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError("our responder did not start")
        out = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                bed.ns_a,
                *wrap("initiator"),
                "-m",
                "bench.ike",
                "--worker",
                "initiator",
                "-n",
                str(n),
                "-c",
                str(window),
                "--ike",
                ike,
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=max(120, n / 20),
        )
        if out.returncode != 0:
            raise RuntimeError(f"our initiator failed:\n{out.stderr[-2000:]}")
        ini = _last_json(out.stdout)
        resp.stdin.close()
        rres = _last_json(resp.stdout.read())
        resp.wait(10)
    finally:
        if resp.poll() is None:
            resp.kill()
    ok = ini["established"]
    if os.environ.get("BENCH_DEBUG"):
        print("   initiator stats", ini.get("stats"), "responder stats", rres.get("stats"))
    return {
        "impl": "ours" if ike == IKE else "ours-hybrid",
        "window": window,
        "established": ok,
        "failed": ini["failed"],
        "seconds": ini["elapsed"],
        "rate": ok / ini["elapsed"] if ini["elapsed"] else 0.0,
        "cpu_ms_per_sa_initiator": 1000 * ini["cpu"] / max(ok, 1),
        "cpu_ms_per_sa_responder": 1000 * rres["cpu"] / max(ok, 1),
    }


# ---------------------------------------------------------------- charon <-> charon


def _charon_conn(me, peer, mid, pid, mts, pts):
    return {
        "version": "2",
        "local_addrs": [me],
        "remote_addrs": [peer],
        "proposals": [IKE],
        "encap": "yes",
        "mobike": "no",
        "unique": "never",
        "rekey_time": "0",
        "reauth_time": "0",
        "dpd_delay": "0",
        "local": {"auth": "psk", "id": mid},
        "remote": {"auth": "psk", "id": pid},
        "children": {
            "net": {
                "local_ts": [f"{mts}/32"],
                "remote_ts": [f"{pts}/32"],
                "esp_proposals": [ESP],
                "mode": "tunnel",
                "rekey_time": "0",
                "start_action": "none",
            }
        },
    }


def run_charon(bed, state, n, window):
    from testbed.charon import Charon

    ca = Charon(
        bed.ns_a,
        os.path.join(state, "a"),
        loglevel=0,
        reuse_ikesa=False,
        half_open=100000,
        ikesa_table=(4096, 16),
        retransmit_timeout=4.0,
        retransmit_tries=5,
    )
    cb = Charon(
        bed.ns_b,
        os.path.join(state, "b"),
        loglevel=0,
        reuse_ikesa=False,
        half_open=100000,
        ikesa_table=(4096, 16),
        retransmit_timeout=4.0,
        retransmit_tries=5,
    )
    try:
        ca.start()
        cb.start()
        for c in (ca, cb):
            c.load_psk(PSK, ["a.bench", "b.bench"])
        ca.load_conn("gw", _charon_conn(A, B, "a.bench", "b.bench", A_IN, B_IN))
        cb.load_conn("gw", _charon_conn(B, A, "b.bench", "a.bench", B_IN, A_IN))
        window_sem = threading.Semaphore(window)
        counts = {"up": 0, "down": 0}
        listening = threading.Event()
        stop = threading.Event()
        finished = threading.Event()

        def listener():
            s = ca.session(timeout=None)
            gen = s.listen(["child-updown", "ike-updown"], timeout=0.2)
            listening.set()
            try:
                for etype, data in gen:
                    if stop.is_set():
                        break
                    if etype == b"child-updown" and data.get("up") == b"yes":
                        counts["up"] += 1
                        window_sem.release()
                    elif etype == b"ike-updown" and data.get("up") != b"yes":
                        counts["down"] += 1
                    if counts["up"] >= n:
                        finished.set()
            except OSError:
                pass  # charon went away at the end of the run
            finally:
                try:
                    gen.close()
                except OSError:
                    pass

        th = threading.Thread(target=listener, daemon=True)
        th.start()
        listening.wait(5)
        time.sleep(0.3)
        cmd = ca.session()
        cpu0 = (ca.cpu_seconds(), cb.cpu_seconds())
        t0 = time.monotonic()
        fired = 0
        while fired < n:
            if not window_sem.acquire(timeout=10):
                break
            list(
                cmd.initiate(
                    {"ike": "gw", "child": "net", "timeout": -1, "init-limits": "no", "loglevel": -1}
                )
            )
            fired += 1
        finished.wait(max(60.0, n / 50))
        elapsed = time.monotonic() - t0
        cpu1 = (ca.cpu_seconds(), cb.cpu_seconds())
        stop.set()
        ok = counts["up"]
        return {
            "impl": "charon",
            "window": window,
            "established": ok,
            "failed": fired - ok,
            "seconds": elapsed,
            "rate": ok / elapsed if elapsed else 0.0,
            "cpu_ms_per_sa_initiator": 1000 * (cpu1[0] - cpu0[0]) / max(ok, 1),
            "cpu_ms_per_sa_responder": 1000 * (cpu1[1] - cpu0[1]) / max(ok, 1),
        }
    finally:
        ca.stop(grace=2)
        cb.stop(grace=2)


# ---------------------------------------------------------------- coordinator


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", choices=["initiator", "responder"])
    ap.add_argument("-n", type=int, default=2000, help="IKE SAs (each with one Child SA) per run")
    ap.add_argument(
        "-c", default="2,16", help="windows (SA setups in flight) to try; each side's best counts"
    )
    ap.add_argument(
        "--repeat", type=int, default=3, help="interleaved repeats per window (the machine is shared)"
    )
    ap.add_argument("--only", choices=["ours", "charon", "hybrid"])
    ap.add_argument("--ike", default=IKE, help=argparse.SUPPRESS)      # the workers' suite
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args.worker, args.n, int(args.c.split(",")[0]), args.ike)

    from testbed import charon as charon_mod
    from testbed.netns import VethPair, cleanup_stale, have_root

    if not have_root():
        sys.exit("bench.ike needs root (network namespaces, ports 500/4500)")
    windows = [int(x) for x in args.c.split(",")]
    only = {"hybrid": "ours-hybrid"}.get(args.only, args.only)
    impls = [i for i in ("charon", "ours", "ours-hybrid") if only in (None, i)]
    if "charon" in impls and not charon_mod.available():
        sys.exit("strongSwan charon with kernel-libipsec is not installed")
    cleanup_stale()
    psi_before = _cpu_pressure()
    runs = []
    state = tempfile.mkdtemp(prefix="ikb", dir="/tmp")
    try:
        # interleaved, so that load from elsewhere on this shared machine hits both alike
        for rep in range(args.repeat):
            for w in windows:
                for impl in impls:
                    with VethPair(lo_a=[A_IN], lo_b=[B_IN]) as bed:
                        r = (
                            run_charon(bed, state, args.n, w)
                            if impl == "charon"
                            else run_ours(bed, args.n, w, HYBRID if impl == "ours-hybrid" else IKE)
                        )
                    r["repeat"] = rep
                    runs.append(r)
                    print(_row(r), flush=True)
    finally:
        shutil.rmtree(state, ignore_errors=True)

    summary = {}
    for impl in impls:
        complete = [r for r in runs if r["impl"] == impl and r["established"] == args.n]
        if not complete:
            continue
        by_window = {}
        for r in complete:
            by_window.setdefault(r["window"], []).append(r)
        # the window that serves each implementation best (median over repeats), then its best run
        w_best = max(by_window, key=lambda w: statistics.median(x["rate"] for x in by_window[w]))
        rs = by_window[w_best]
        summary[impl] = {
            "window": w_best,
            "best_rate": max(x["rate"] for x in rs),
            "median_rate": statistics.median(x["rate"] for x in rs),
            "cpu_ms_per_sa_both_ends": statistics.median(
                x["cpu_ms_per_sa_initiator"] + x["cpu_ms_per_sa_responder"] for x in rs
            ),
            "cpu_ms_per_sa_initiator": statistics.median(x["cpu_ms_per_sa_initiator"] for x in rs),
            "cpu_ms_per_sa_responder": statistics.median(x["cpu_ms_per_sa_responder"] for x in rs),
        }
    print()
    print(
        f"IKE SA + 1 Child SA per second, {IKE} / ESP {ESP}, PSK, NAT-T, n={args.n}, "
        f"{args.repeat} interleaved repeats per window {windows}"
    )
    print(f"{'implementation':<15}{'window':>7}{'median/s':>10}{'best/s':>9}{'CPU ms/SA (init+resp)':>26}")
    for impl in ("ours", "ours-hybrid", "charon"):
        r = summary.get(impl)
        if r:
            cpu = f"{r['cpu_ms_per_sa_initiator']:.2f} + {r['cpu_ms_per_sa_responder']:.2f}"
            print(f"{impl:<15}{r['window']:>7}{r['median_rate']:>10.0f}{r['best_rate']:>9.0f}{cpu:>26}")
    ratio = ratio_best = cpu_ratio = None
    if "ours" in summary and "charon" in summary:
        o, c = summary["ours"], summary["charon"]
        ratio = o["median_rate"] / c["median_rate"]
        ratio_best = o["best_rate"] / c["best_rate"]
        cpu_ratio = c["cpu_ms_per_sa_both_ends"] / o["cpu_ms_per_sa_both_ends"]
        print(
            f"ratio ours/charon: {ratio:.2f}x (median), {ratio_best:.2f}x (best); "
            f"CPU per SA: charon uses {cpu_ratio:.2f}x ours"
        )
    hybrid = None
    if "ours" in summary and "ours-hybrid" in summary:
        hybrid = summary["ours-hybrid"]["median_rate"] / summary["ours"]["median_rate"]
        print(f"ratio ours hybrid ({HYBRID}) / ours classical: {hybrid:.2f}x (median)")
    from bench._util import goal, report_goals
    goals = {"ours_at_least_charons_rate": goal(ratio is not None and ratio >= 1.0,
                                                None if ratio is None else round(ratio, 2), ">= 1.0"),
             "hybrid_at_least_half_classical": goal(hybrid is not None and hybrid >= 0.5,
                                                    None if hybrid is None else round(hybrid, 2), ">= 0.5")}
    report_goals(goals)
    result = {
        "benchmark": "ike",
        "goals": goals,
        "suite": f"IKE {IKE}, ESP {ESP}, PSK, one Child SA, NAT-T",
        "hybrid_suite": f"IKE {HYBRID}",
        "hybrid_rate": summary.get("ours-hybrid", {}).get("median_rate"),
        "hybrid_ratio": hybrid,
        "n": args.n,
        "windows": windows,
        "repeats": args.repeat,
        "cpus": os.cpu_count(),
        "ours_rate": summary.get("ours", {}).get("median_rate"),
        "charon_rate": summary.get("charon", {}).get("median_rate"),
        "ratio": ratio,
        "ratio_best": ratio_best,
        "cpu_ratio": cpu_ratio,
        "summary": summary,
        "cpu_pressure_avg60": {"before": psi_before, "after": _cpu_pressure()},
        "runs": runs,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0


def _cpu_pressure():
    """Share of time runnable tasks waited for a CPU (Linux PSI, "some avg60"): how busy the shared
    machine was; a loaded machine depresses both implementations' rates."""
    try:
        with open("/proc/pressure/cpu") as f:
            return float(f.readline().split()[2].split("=")[1])
    except (OSError, IndexError, ValueError):
        return None


def _row(r):
    return (
        f"  {r['impl']:<7} window {r['window']:>3}: {r['established']} established, {r['failed']} failed in "
        f"{r['seconds']:.2f}s = {r['rate']:.0f}/s (CPU/SA init {r['cpu_ms_per_sa_initiator']:.2f} ms, "
        f"resp {r['cpu_ms_per_sa_responder']:.2f} ms)"
    )


if __name__ == "__main__":
    sys.exit(main())
