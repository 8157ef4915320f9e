"""Load benchmark (`inv bench --only load`): iperf3 through ikeoffloadd + a simulated board +
strongSwan charon, at the link rates users have.

    python -m bench.load [--seconds S] [--cases esp32-devkitc,rp2040-pico-spi,pty] [--check]

Cases: the sim standing in for esp32-devkitc (its UART at 921600 baud, its AES-CBC + HMAC-SHA-256
suite, its CPU), for rp2040-pico-spi (its SPI link's rate, its CPU: crypto-bound), and the `sim`
profile on an unthrottled pty. A case `PROFILE@BAUD` runs a profile at another link rate. Each
runs, with 20 pings/s through the tunnel throughout: TCP down (iperf3 -R), TCP up, then UDP up at
3x the computed capacity. Reported per phase: goodput and its fraction of the payload capacity,
board losses, ping RTT p50/p99 under load, host drops by reason.

Payload capacity (shown per case): a 1400-byte inner packet (the TUN MTU) costs, on the busier
direction of the link, itself plus the ESP header, IV, padding and ICV and the link's framing
(LINK_OVERHEAD); capacity = min(link rate / (1400 + overhead), 1 / CPU time per packet) x 1400
bytes/s of IP packets, less what the pings that measure RTT meanwhile take (20/s: two small
packets each for the board, whose fixed per-packet CPU time is not small on a MicroPython
board). For TCP each segment also brings ACKs the other way, which cost the board
a packet each (and link bytes in the same direction as the segment's request): the TCP capacity
per phase counts the ACKs per segment the board saw, and goodput is x (1400 - 52) / 1400 (IP and
TCP headers with timestamps). The goals (issue: "real link speeds"): 0 board losses, TCP goodput >= 80% of
capacity, ping p99 under TCP load <= 100 ms, and under the UDP flood 0 losses with drops counted
on the host. Writes bench/results/load.json.
"""
import argparse
import json
import os
import subprocess
import sys
import time

from bench._util import goal, median, pct, report_goals, table, write
from firmware import profiles
from host.dataplane.datapath import LINK_OVERHEAD

MTU = 1400
TCP_HEADERS = 52
PING_RATE = 20          # echo requests per second, through the tunnel the whole run (RTT under load)
PING_BYTES = 84         # an echo request or reply: IP + ICMP + the pinger's 23 bytes


def _share_left(prof, transform, rate):
    """(link, CPU) fractions the pinger leaves to the load: each echo is two small packets for the
    board (one each way) — negligible on a link, but on a MicroPython CPU each costs the fixed
    per-packet time (~3.7 ms on an RP2040)."""
    t = profiles.packet_time(profiles.cpu_costs(prof), transform, PING_BYTES)
    link = 1 - PING_RATE * 2 * (PING_BYTES + LINK_OVERHEAD) / rate if rate else 1.0
    return link, 1 - PING_RATE * 2 * t


def capacity(profile_name, baud=None):
    """Payload capacity of a board in inner-IP bytes per second, and how it was computed."""
    prof = profiles.load(profile_name)
    rate = profiles.link_rate(prof) if baud is None else (baud / 10 or None)
    from testbed.demo import SWAN_ESP, esp_proposals_for
    esp = esp_proposals_for(profile_name)[0]
    name = next(n for n, s in SWAN_ESP.items() if s == esp)
    costs = profiles.cpu_costs(prof)
    cpu = profiles.packet_time(costs, profiles.TRANSFORMS[name], MTU)
    link_left, cpu_left = _share_left(prof, profiles.TRANSFORMS[name], rate)
    link_pps = link_left * rate / (MTU + LINK_OVERHEAD) if rate else None
    cpu_pps = cpu_left / cpu if cpu else None
    pps = min(x for x in (link_pps, cpu_pps) if x) if (link_pps or cpu_pps) else None
    return {"profile": profile_name, "transform": name, "link_Bps": rate, "cpu_s_per_packet": cpu,
            "link_pps": link_pps, "cpu_pps": cpu_pps, "pps": pps,
            "ip_Bps": pps * MTU if pps else None,
            "tcp_goodput_bps": pps * (MTU - TCP_HEADERS) * 8 if pps else None}


def tcp_capacity(cap, ack_ratio):
    """TCP goodput capacity when each data segment costs its own packet and `ack_ratio` ACKs
    (52-byte packets) the other way: both share the board's CPU and, on a UART, the direction the
    board's requests travel (an ENCRYPT of an ACK and a DECRYPT of data both go host -> board)."""
    prof = profiles.load(cap["profile"])
    costs = profiles.cpu_costs(prof)
    t = profiles.TRANSFORMS[cap["transform"]]
    cpu = profiles.packet_time(costs, t, MTU) + ack_ratio * profiles.packet_time(costs, t, TCP_HEADERS)
    wire = (MTU + LINK_OVERHEAD) + ack_ratio * (TCP_HEADERS + LINK_OVERHEAD)
    link_left, cpu_left = _share_left(prof, t, cap["link_Bps"])
    rates = [x for x in ((link_left * cap["link_Bps"] / wire) if cap["link_Bps"] else None,
                         (cpu_left / cpu) if cpu else None) if x]
    return min(rates) * (MTU - TCP_HEADERS) * 8 if rates else None


def packets(bed):
    """(packets out, packets in) of every Child SA, from the board's counters."""
    out = inn = 0
    for sa in bed.ctl("list-sas"):
        for c in sa["children"]:
            out += c["packets_out"]
            inn += c["packets_in"]
    return out, inn


def iperf(bed, args, seconds):
    """One iperf3 client run (JSON). iperf3's server takes one test at a time and may still be
    closing the last one: a refused control connection is tried again once, a second later."""
    from testbed.demo import PEER_INNER
    cmd = ["ip", "netns", "exec", bed.net.ns_a, "iperf3", "-c", PEER_INNER, "-B", bed.inner_a[0], "-J",
           "-t", str(seconds), "--connect-timeout", "5000"] + args
    for attempt in (1, 2):
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
        try:
            res = json.loads(p.stdout)
        except json.JSONDecodeError:
            res = {"error": (p.stdout + p.stderr)[-500:]}
        if "control" not in str(res.get("error", "")) or attempt == 2:
            return res
        time.sleep(1.0)


def run_case(case, seconds):
    from testbed.demo import DemoBed
    profile, _, baud = case.partition("@")
    if profile == "pty":
        profile = "sim"
    baud = int(baud) if baud else None
    cap = capacity(profile, baud)
    bed = DemoBed(profile=profile, baud=baud, quiet=True)
    out = {"case": case, "capacity": cap, "phases": {}}
    server = None
    try:
        bed.start()
        bed.wait_tunnels(timeout=30)
        server = subprocess.Popen(["ip", "netns", "exec", bed.net.ns_b, "iperf3", "-s", "-B", bed.inner_b[0]],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        pinger = bed.start_pinger(interval=1 / PING_RATE)
        time.sleep(1.0)
        udp_rate = int(3 * cap["ip_Bps"] * 8) if cap["ip_Bps"] else 3_000_000_000
        phases = [("tcp_down", ["-R"]), ("tcp_up", []),
                  ("udp_up_3x", ["-u", "-b", str(udp_rate), "-l", str(MTU - 28)])]
        for name, args in phases:
            before = bed.ctl("stats")
            st0 = bed.sim(0, "status")
            p0, busy0, late0 = packets(bed), st0.get("cpu_busy_s", 0.0), st0.get("cpu_late_s", 0.0)
            t0 = time.monotonic()
            res = iperf(bed, args, seconds)
            t1 = time.monotonic()
            after = bed.ctl("stats")
            st1 = bed.sim(0, "status")
            p1, busy1, late1 = packets(bed), st1.get("cpu_busy_s", 0.0), st1.get("cpu_late_s", 0.0)
            esp_out, esp_in = p1[0] - p0[0], p1[1] - p0[1]
            rtts = [pinger.replies[s] - pinger.sent[s] for s in pinger.sent
                    if s in pinger.replies and t0 + 1 <= pinger.sent[s] <= t1 - 1]
            sent_in = [s for s in pinger.sent if t0 + 1 <= pinger.sent[s] <= t1 - 1]
            end = res.get("end", {})
            ack_ratio = None
            if "-u" in args:
                # the sender's rate less what the receiver reports lost: what came through
                bps = end.get("sum", {}).get("bits_per_second")
                lost = end.get("sum", {}).get("lost_percent")
                if bps is not None and lost is not None:
                    bps *= 1 - lost / 100
                tcp_cap = None
            else:
                bps = end.get("sum_received", {}).get("bits_per_second")
                lost = None
                data, acks = (esp_in, esp_out) if "-R" in args else (esp_out, esp_in)
                ack_ratio = acks / data if data else 0.5
                tcp_cap = tcp_capacity(cap, ack_ratio)
            drops = {k: after.get("host_drops", {}).get(k, 0) - before.get("host_drops", {}).get(k, 0)
                     for k in after.get("host_drops", {})}
            out["phases"][name] = {
                "goodput_bps": bps, "udp_lost_percent": lost, "ack_ratio": ack_ratio,
                "capacity_bps": tcp_cap if "-u" not in args else (cap["ip_Bps"] * 8 if cap["ip_Bps"] else None),
                "of_capacity": bps / tcp_cap if bps and tcp_cap
                else (bps / (cap["ip_Bps"] * 8) if bps and cap["ip_Bps"] and "-u" in args else None),
                "board_cpu_busy": (busy1 - busy0) / (t1 - t0),
                "sim_late": (late1 - late0) / (t1 - t0),
                "packets_out": esp_out, "packets_in": esp_in,
                "board_losses": after["board_losses"] - before["board_losses"],
                "ping_sent": len(sent_in), "ping_answered": len(rtts),
                "rtt_p50_ms": median(rtts) * 1000 if rtts else None,
                "rtt_p99_ms": pct(rtts, 0.99) * 1000 if rtts else None,
                "host_drops": {k: v for k, v in drops.items() if v},
                "iperf_error": res.get("error"),
                "tunnel_up": bool(bed.wait_tunnels(timeout=5)),
            }
        pinger.stop()
    finally:
        if server:
            server.terminate()
            server.wait()
        bed.stop()
    return out


GOALS = {
    "no_board_losses": "0 board losses in every phase of every case, the tunnel up after each",
    "tcp_goodput": "TCP goodput >= 80% of the computed capacity, both ways, where the board bounds it",
    "ping_p99_under_tcp": "ping RTT p99 <= 100 ms under TCP load, where the board bounds it",
    "udp_flood_dropped_on_host": "UDP at 3x capacity: the excess dropped (and counted) on the host",
}


def goals_of(cases):
    """Each goal over every case and phase: met, the worst figure, what it asks."""
    losses = [(c["case"], n, ph["board_losses"], ph["tunnel_up"]) for c in cases for n, ph in c["phases"].items()]
    tcp = [(c["case"], n, ph) for c in cases for n, ph in c["phases"].items()
           if n.startswith("tcp") and ph["capacity_bps"]]
    udp = [(c["case"], n, ph) for c in cases for n, ph in c["phases"].items()
           if n.startswith("udp") and c["capacity"]["ip_Bps"]]
    worst_tcp = min(tcp, key=lambda x: x[2]["of_capacity"] or 0, default=None)
    worst_rtt = max(tcp, key=lambda x: x[2]["rtt_p99_ms"] or 1e9, default=None)
    return {
        "no_board_losses": goal(all(n == 0 and up for _, _, n, up in losses),
                                sum(n for _, _, n, _ in losses), 0),
        "tcp_goodput": goal(worst_tcp is not None and (worst_tcp[2]["of_capacity"] or 0) >= 0.8,
                            "%s %s %.0f%%" % (worst_tcp[0], worst_tcp[1], 100 * (worst_tcp[2]["of_capacity"] or 0))
                            if worst_tcp else None, ">= 80%"),
        "ping_p99_under_tcp": goal(worst_rtt is not None and (worst_rtt[2]["rtt_p99_ms"] or 1e9) <= 100,
                                   "%s %s %.1f ms" % (worst_rtt[0], worst_rtt[1], worst_rtt[2]["rtt_p99_ms"] or -1)
                                   if worst_rtt else None, "<= 100 ms"),
        "udp_flood_dropped_on_host": goal(bool(udp) and all(ph["host_drops"] for _, _, ph in udp),
                                          [sum(ph["host_drops"].values()) for _, _, ph in udp], "> 0 each"),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.load")
    ap.add_argument("--seconds", type=int, default=int(os.environ.get("LOAD_SECONDS", 60)))
    ap.add_argument("--cases", default="esp32-devkitc,rp2040-pico-spi,pty")
    ap.add_argument("--check", action="store_true", help="exit 1 unless every goal is met")
    ap.add_argument("--name", default="load", help="result file name (bench/results/NAME.json)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.load needs root (network namespaces, TUN, port 500)", file=sys.stderr)
        return 2
    cases = [run_case(c, args.seconds) for c in args.cases.split(",")]
    rows = []
    for c in cases:
        cap = c["capacity"]
        for name, ph in c["phases"].items():
            rows.append((c["case"], name,
                         "%.3f" % (ph["goodput_bps"] / 1e6) if ph["goodput_bps"] else "-",
                         "%.3f" % (ph["capacity_bps"] / 1e6) if ph["capacity_bps"] else "-",
                         "%.0f%%" % (100 * ph["of_capacity"]) if ph["of_capacity"] else "-",
                         "%.2f" % ph["ack_ratio"] if ph["ack_ratio"] is not None else "-",
                         "%.0f%%" % (100 * ph["board_cpu_busy"]) if ph["board_cpu_busy"] else "-",
                         ph["board_losses"], "%d/%d" % (ph["ping_answered"], ph["ping_sent"]),
                         "%.1f" % ph["rtt_p50_ms"] if ph["rtt_p50_ms"] is not None else "-",
                         "%.1f" % ph["rtt_p99_ms"] if ph["rtt_p99_ms"] is not None else "-",
                         ", ".join("%s %d" % kv for kv in sorted(ph["host_drops"].items())) or "-"))
    for c in cases:
        cap = c["capacity"]
        print("%s: %s; link %s B/s -> %s pkt/s; CPU %.2f ms/packet -> %s pkt/s; capacity %s Mbit/s of IP, "
              "%s Mbit/s TCP goodput" % (
                  c["case"], cap["transform"], "%.0f" % cap["link_Bps"] if cap["link_Bps"] else "unlimited",
                  "%.1f" % cap["link_pps"] if cap["link_pps"] else "-", (cap["cpu_s_per_packet"] or 0) * 1000,
                  "%.1f" % cap["cpu_pps"] if cap["cpu_pps"] else "-",
                  "%.3f" % (cap["ip_Bps"] * 8 / 1e6) if cap["ip_Bps"] else "-",
                  "%.3f" % (cap["tcp_goodput_bps"] / 1e6) if cap["tcp_goodput_bps"] else "-"))
    table("load: iperf3 through ikeoffloadd + sim board + charon (%d s per phase)" % args.seconds,
          ("case", "phase", "Mbit/s", "capacity", "of cap.", "ACKs/seg", "board CPU", "losses", "pings", "p50 ms",
           "p99 ms", "host drops"), rows)
    goals = goals_of(cases)
    report_goals(goals)
    ok = all(g["met"] for g in goals.values())
    write(args.name, {"seconds": args.seconds, "goals": goals, "cases": cases})
    return 0 if ok or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
