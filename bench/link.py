"""Link benchmark (`inv bench --only link`): the host<->board link over the simulated board.

Measured side by side in one run:
- round trip of a heartbeat over a pty, socket:// and a pty throttled to 921600 baud;
- SA_ADD+SA_DEL rate, one at a time and with 8 in flight;
- board-loss detection latency with the default profile (period 100 ms, 3 misses): reset
  (boot HELLO), reset with the HELLO lost (boot id on the next heartbeat), hung board (misses).
Writes bench/results/link.json.
"""
import asyncio
import sys
import time

from bench._util import goal, median, pct, report_goals, table, write
from firmware import profiles
from firmware.link import messages as m
from hil_tests.bench import SimBench
from host.offload.client import BoardClient
from host.offload.events import BoardLost, BoardReady

RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 10
GOALS = {"loss_detected_within_bound": "every board loss (reset, reset with its HELLO lost, hang) detected "
                                       "within period x (misses + 1) of the default profile"}


def spec(spi):
    return m.SaSpec(spi, m.DIR_IN, m.ENCR_AES_GCM_16, b"k" * 36, reqid=spi & 0xFFFF)


async def client_for(url, period=0.1, misses=3, baud=None, link_key=None):
    # a pty ignores the baud rate; the simulator paces it, and the client accounts wire time
    c = BoardClient("bench", url, period=period, misses=misses,
                    link_options={"byte_time": 10.0 / baud} if baud else None, link_key=link_key)
    await c.start()
    await c.wait_ready(10)
    await c.events.get()
    return c


async def rtt_and_rate(url, baud=None, link_key=None):
    c = await client_for(url, period=10.0, baud=baud, link_key=link_key)
    rtts = []
    for _ in range(300 if not baud else 100):
        t0 = time.perf_counter()
        await c.counters()
        rtts.append(time.perf_counter() - t0)
    n = 400 if not baud else 100
    t0 = time.perf_counter()
    for i in range(n):
        await c.sa_add(spec(0x1000 + i))
        await c.sa_del(0x1000 + i, 0)
    seq_rate = 2 * n / (time.perf_counter() - t0)

    async def worker(base):
        for i in range(n // 8):
            await c.sa_add(spec(base + i))
            await c.sa_del(base + i, 0)
    t0 = time.perf_counter()
    await asyncio.gather(*[worker(0x100000 * (k + 1)) for k in range(8)])
    par_rate = 2 * (n // 8) * 8 / (time.perf_counter() - t0)
    await c.close()
    return rtts, seq_rate, par_rate


async def next_of(c, kind, timeout=5):
    while True:
        ev = await asyncio.wait_for(c.events.get(), timeout)
        if isinstance(ev, kind):
            return ev


async def detection(bench, period, misses):
    c = await client_for(bench.url, period, misses, link_key=bench.link_key)
    out = {"unsolicited-hello": [], "boot-id-changed": [], "missed-heartbeats": [], "recovered": []}
    loop = asyncio.get_running_loop()
    for i in range(RUNS):
        for kind in ("reset", "quiet", "hang"):
            await c.sa_add(spec(0x5000 + i))
            await asyncio.sleep(period * (0.13 + 0.77 * i / max(1, RUNS - 1)))  # spread over a period
            t0 = time.monotonic()
            if kind == "hang":
                await loop.run_in_executor(None, bench.hang)
            else:
                await loop.run_in_executor(None, bench.reset, kind == "quiet")
            lost = await next_of(c, BoardLost)
            out[lost.reason].append(lost.at - t0)
            if kind == "hang":
                await loop.run_in_executor(None, bench.resume)
            ready = await next_of(c, BoardReady)
            out["recovered"].append(ready.at - t0)
    await c.close()
    return out


async def main():
    prof = profiles.load("sim")
    period = prof["heartbeat"]["period_ms"] / 1000
    misses = prof["heartbeat"]["misses"]
    results = {"period_ms": period * 1000, "misses": misses,
               "bound_ms": (period * misses + period) * 1000, "transports": {}}
    rows = []
    for name, args, baud in (("pty", (), None), ("socket://", ("--socket", "127.0.0.1:0"), None),
                             ("pty @921600 baud", ("--baud", "921600"), 921600)):
        b = SimBench("sim", args)
        try:
            rtts, seq_rate, par_rate = await rtt_and_rate(b.url, baud, b.link_key)
        finally:
            b.close()
        results["transports"][name] = {"rtt_median_us": median(rtts) * 1e6, "rtt_p99_us": pct(rtts, 0.99) * 1e6,
                                       "sa_cmds_per_s_serial": seq_rate, "sa_cmds_per_s_window8": par_rate}
        rows.append((name, "%.0f" % (median(rtts) * 1e6), "%.0f" % (pct(rtts, 0.99) * 1e6),
                     "%.0f" % seq_rate, "%.0f" % par_rate))
    pty = results["transports"]["pty"]["sa_cmds_per_s_window8"]
    for r in results["transports"].values():
        r["window8_rate_vs_pty"] = r["sa_cmds_per_s_window8"] / pty
    table("Link round trip and SA command rate (simulated board)",
          ["transport", "RTT median µs", "RTT p99 µs", "SA cmds/s 1 in flight", "SA cmds/s 8 in flight"], rows)

    b = SimBench("sim")
    try:
        det = await detection(b, period, misses)
    finally:
        b.close()
    results["detection_ms"] = {k: {"median": median(v) * 1000, "max": max(v) * 1000 if v else None, "n": len(v)}
                               for k, v in det.items()}
    rows = [(k, v["n"], "%.1f" % v["median"], "%.1f" % (v["max"] or 0)) for k, v in results["detection_ms"].items()]
    table("Board loss detection, default profile: period %.0f ms x %d misses (bound %.0f ms)"
          % (period * 1000, misses, results["bound_ms"]), ["event -> detection", "n", "median ms", "max ms"], rows)
    worst = max(v["max"] or 0 for k, v in results["detection_ms"].items() if k != "recovered")
    results["goals"] = {"loss_detected_within_bound": goal(
        worst <= results["bound_ms"] and all(results["detection_ms"][k]["n"] for k in ("unsolicited-hello",
                                                                                      "missed-heartbeats")),
        "worst %.1f ms" % worst, "<= %.0f ms" % results["bound_ms"])}
    report_goals(results["goals"])
    print("\nwrote", write("link", results))


if __name__ == "__main__":
    asyncio.run(main())
