"""Hub scale (`inv bench --only scale --check`, root): many tunnels, several boards, board resets.

    python -m bench.scale [--only one_peer|hub] [--tunnels N] [--peers P] [--resets R]

Two cases on the scale testbed (testbed/scale.py: ikeoffloadd in a namespace, simulated boards,
one strongSwan charon playing every peer, an ICMP echo stream through every tunnel):
  one_peer  60 connections to one charon with its defaults (5 half-open IKE SAs per address),
            one board;
  hub       500 peers at distinct addresses over two boards (640 and 512 SA slots).
For each: the time from the daemon starting its connections until every tunnel answered an echo
(tunnels watched every 50 ms), the daemon's CPU over that time per tunnel, its RSS once all are
up; then each board reset in turn (the sim's control socket) and, for the reset board's
tunnels, the time from the reset until each answered an echo sent after it (p50 / p100), the
flush's duration (the daemon's incident: loss detected -> IKE SAs flushed, Deletes sent), and
the echoes lost on the other board's tunnels (probed every 0.5 s meanwhile). RSS per IKE SA is
the difference between the two cases' RSS over the difference of their tunnels (each tunnel one
IKE SA with one Child SA). Writes bench/results/scale.json.
"""
import argparse
import os
import sys
import time

from bench._util import goal, median, report_goals, table, write

GOALS = {
    "one_peer_60_up_1s": "60 connections to one charon (its defaults): all pass traffic within 1 s from cold",
    "one_peer_60_back_1s": "... after a board reset, all pass traffic again within 1 s (every reset)",
    "hub_500_up_10s": "500 peers over two boards: all pass traffic within 10 s from cold",
    "hub_500_back_3s": "... a board reset: all its tunnels pass traffic again within 3 s (p100, every reset)",
    "hub_500_other_board_0_lost": "... the other board's tunnels lose 0 echoes during the reset",
    "rss_per_ike_sa_20kb": "daemon RSS <= 20 KB per IKE SA with one Child SA: (RSS with all 500 up - RSS "
                           "before the first) / 500",
}


def run_case(name, tunnels, peers, boards, resets, say=print):
    from testbed.scale import ScaleBed
    bed = ScaleBed(tunnels, peers, boards)
    out = {"tunnels": tunnels, "peers": peers, "boards": list(boards)}
    probe = None
    try:
        bed.start(baseline=True)
        cpu0 = bed.daemon_cpu()
        out["rss_start_kb"] = bed.rss_baseline_kb       # configuration loaded, boards opened, no SA
        probe = bed.probe(interval=0.5, fast=0.2 if tunnels > 100 else 0.05)
        up = bed.watch_up(probe)
        cpu1 = bed.daemon_cpu()
        out["up"] = len(up)
        out["up_s"] = max(up.values()) if len(up) == tunnels else None
        out["up_p50_s"] = median(list(up.values()))
        out["cpu_ms_per_tunnel"] = (cpu1 - cpu0) * 1000 / tunnels
        time.sleep(1.0)
        out["rss_kb"] = bed.daemon_rss_kb()
        out["rss_per_tunnel_kb"] = (out["rss_kb"] - out["rss_start_kb"]) / tunnels
        say("%s: %d/%d tunnels up in %s s (p50 %.2f s), daemon CPU %.2f ms per tunnel, RSS %d KB (%d KB "
            "before: %.1f KB per tunnel)" % (name, len(up), tunnels, "%.2f" % out["up_s"] if out["up_s"] is not None
                                             else "-", out["up_p50_s"], out["cpu_ms_per_tunnel"], out["rss_kb"],
                                             out["rss_start_kb"], out["rss_per_tunnel_kb"]))
        out["resets"] = []
        for r in range(resets):
            cpu_r0 = bed.daemon_cpu()
            res = bed.reset_board(probe, r % len(boards))
            cpu_r1 = bed.daemon_cpu()
            inc, dts, mine = res["incident"], list(res["back"].values()), res["mine"]
            rec = {"board": res["board"], "tunnels": len(mine), "back": len(dts),
                   "back_p50_s": median(dts), "back_p100_s": max(dts) if len(dts) == len(mine) and dts else None,
                   "flush_ms": ((inc["flushed_at"] - inc["detected_at"]) * 1000) if inc.get("flushed_at") else None,
                   "detect_ms": ((inc["detected_at"] - res["t_reset"]) * 1000) if inc.get("detected_at") else None,
                   "ike_sas_flushed": inc.get("ike_sas_flushed"), "deletes_sent": inc.get("deletes_sent"),
                   "cpu_ms_per_tunnel": (cpu_r1 - cpu_r0) * 1000 / max(1, len(mine)),
                   "other_tunnels": len(res["other"]), "other_sent": res["other_sent"],
                   "other_lost": res["other_lost"]}
            out["resets"].append(rec)
            say("%s: reset of %s: %d/%d tunnels back, p50 %.2f s, p100 %s s; flush %.1f ms; other board: "
                "%d/%d echoes lost" % (name, rec["board"], rec["back"], rec["tunnels"], rec["back_p50_s"],
                                       "%.2f" % rec["back_p100_s"] if rec["back_p100_s"] is not None else "-",
                                       rec["flush_ms"] or float("nan"), rec["other_lost"], rec["other_sent"]))
        out["rss_after_resets_kb"] = bed.daemon_rss_kb()
        out["charon_cpu_s"] = bed.charon.cpu_seconds()
    finally:
        if probe is not None:
            probe.stop()
        bed.stop()
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.scale")
    ap.add_argument("--only", choices=("one_peer", "hub"))
    ap.add_argument("--tunnels", type=int, help="the hub case's tunnels (default 500)")
    ap.add_argument("--resets", type=int, default=2)
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.scale needs root (network namespaces, TUN, UDP port 500)", file=sys.stderr)
        return 2
    hub_n = args.tunnels or 500
    cases = {}
    if args.only in (None, "one_peer"):
        cases["one_peer"] = run_case("one_peer", 60, 1, (256,), max(args.resets, 3))
    if args.only in (None, "hub"):
        cases["hub"] = run_case("hub", hub_n, hub_n, (640, 512), args.resets)
    rows = []
    for name, c in cases.items():
        rs = c.get("resets", [])
        rows.append((name, c["tunnels"], c["peers"], len(c["boards"]),
                     "%.2f" % c["up_s"] if c["up_s"] is not None else "not all",
                     "%.2f" % c["cpu_ms_per_tunnel"], c["rss_kb"],
                     "/".join("%.2f" % r["back_p50_s"] for r in rs),
                     "/".join("%.2f" % r["back_p100_s"] if r["back_p100_s"] is not None else "-" for r in rs),
                     "/".join("%.0f" % r["flush_ms"] if r["flush_ms"] is not None else "-" for r in rs),
                     "/".join(str(r["other_lost"]) for r in rs)))
    table("hub scale (each reset: p50 / p100 over the reset board's tunnels)",
          ["case", "tunnels", "peers", "boards", "all up s", "CPU ms/tunnel", "RSS KB", "back p50 s",
           "back p100 s", "flush ms", "other lost"], rows)
    goals = {}
    one, hub = cases.get("one_peer"), cases.get("hub")

    def all_within(case, bound):
        rs = case["resets"]
        worst = [r["back_p100_s"] for r in rs]
        return (bool(rs) and all(w is not None and w <= bound for w in worst)), worst

    if one:
        goals["one_peer_60_up_1s"] = goal(one["up_s"] is not None and one["up_s"] <= 1.0, one["up_s"], 1.0)
        ok, worst = all_within(one, 1.0)
        goals["one_peer_60_back_1s"] = goal(ok, worst, 1.0)
    if hub and hub_n == 500:
        goals["hub_500_up_10s"] = goal(hub["up_s"] is not None and hub["up_s"] <= 10.0, hub["up_s"], 10.0)
        ok, worst = all_within(hub, 3.0)
        goals["hub_500_back_3s"] = goal(ok, worst, 3.0)
        lost = [r["other_lost"] for r in hub["resets"]]
        goals["hub_500_other_board_0_lost"] = goal(bool(lost) and not any(lost) and
                                                   all(r["other_sent"] > 0 for r in hub["resets"]), lost, 0)
    if one and hub:
        per = (hub["rss_kb"] - one["rss_kb"]) / (hub["tunnels"] - one["tunnels"])
        cases["rss_per_connection_kb"] = per
        print("daemon RSS per connection, configuration included: (%d - %d KB) / (%d - %d) = %.1f KB"
              % (hub["rss_kb"], one["rss_kb"], hub["tunnels"], one["tunnels"], per))
    if hub:
        print("daemon RSS per IKE SA with one Child SA: (%d KB all up - %d KB before any) / %d = %.1f KB"
              % (hub["rss_kb"], hub["rss_start_kb"], hub["tunnels"], hub["rss_per_tunnel_kb"]))
        if hub_n == 500:
            goals["rss_per_ike_sa_20kb"] = goal(hub["rss_per_tunnel_kb"] <= 20.0, round(hub["rss_per_tunnel_kb"], 1),
                                                20.0)
    report_goals(goals)
    if args.only is None and hub_n == 500:
        print("wrote", write("scale", dict(cases, goals=goals)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
