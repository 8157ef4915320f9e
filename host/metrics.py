"""The OpenMetrics endpoint (`[daemon] metrics = "127.0.0.1:9466"`; prometheus_client, the
`metrics` extra): SAs, boards, board-loss incidents and the flush and recovery timings, link
errors and heartbeats per board, the host's packet drops by reason, the IKE engine's counters.

prometheus_client serves HTTP from its own thread; each scrape asks the event loop for the
numbers (`call_soon_threadsafe`), so nothing reads the daemon's tables while the loop changes
them — and a scrape of a hung loop times out instead of answering stale figures. The counters
are the ones `ikeoffloadctl stats` and `list-boards` show (host/control_views.py); only the
flush and recovery histograms are kept here, observed as each incident happens.

    ikeoffload_ike_sas{conn,state}                       IKE SAs
    ikeoffload_child_sas{board}                          Child SAs installed on each board
    ikeoffload_board_up{board}                           1 while the board is ready
    ikeoffload_board_sas{board} / _board_sa_slots{board} SAs on the board / its SAD's size
    ikeoffload_board_losses_total{board}                 losses detected (reset, hang, lost SAs, ...)
    ikeoffload_board_incidents_total{board,reason}       flushes: losses, operator flushes, reloads
    ikeoffload_board_flush_seconds                       loss detected -> IKE SAs flushed (histogram)
    ikeoffload_board_recovery_seconds                    loss detected -> first new Child SA up (histogram)
    ikeoffload_ike_sas_flushed_total, _deletes_sent_total
    ikeoffload_link_frames_dropped_total{board,reason}   CRC, COBS, version, authentication, ...
    ikeoffload_link_retries_total{board}, _link_requests_failed_total{board}
    ikeoffload_board_heartbeats_sent_total{board}, _heartbeats_missed_total{board}
    ikeoffload_board_heartbeat_rtt_seconds{board}        the last heartbeat's round trip
    ikeoffload_host_drops_total{reason}                  packets the host dropped before a board
    ikeoffload_datapath_total{counter}                   the data path's counters
    ikeoffload_ike_engine_total{counter}                 the IKE engine's counters
    ikeoffload_child_installs_total{result}              Child SA installs on boards, ok / failed
"""
import asyncio
import concurrent.futures
import logging

from host import __version__
from host.config import metrics_address
from host.control_views import board_counters
from host.dataplane.datapath import DROP_REASONS

log = logging.getLogger("ikeoffloadd.control")

SCRAPE_TIMEOUT = 5.0
# loss -> flushed takes milliseconds; loss -> new Child SA up tens of ms to seconds
FLUSH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
RECOVERY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class DaemonCollector:
    """Reads the daemon's state on its event loop for each scrape."""

    def __init__(self, daemon, loop):
        self.daemon = daemon
        self.loop = loop

    def collect(self):
        fut = concurrent.futures.Future()

        def run():
            try:
                fut.set_result(self.families())
            except Exception as e:         # answered as a failed scrape, logged once here
                log.exception("metrics: collecting failed")
                fut.set_exception(e)
        self.loop.call_soon_threadsafe(run)
        return fut.result(SCRAPE_TIMEOUT)

    def families(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

        d = self.daemon
        out = [InfoMetricFamily("ikeoffload", "ikeoffloadd", value={"version": __version__})]
        ike = GaugeMetricFamily("ikeoffload_ike_sas", "IKE SAs by connection and state", labels=["conn", "state"])
        counts = {}
        for sa in d.engine.ike_sas():
            key = (sa.conn.name if sa.conn else "", str(sa.state))
            counts[key] = counts.get(key, 0) + 1
        for (conn, state), n in sorted(counts.items()):
            ike.add_metric([conn, state], n)
        out.append(ike)
        half = GaugeMetricFamily("ikeoffload_ike_sas_half_open", "responder IKE SAs not yet authenticated")
        half.add_metric([], d.engine.half_open_count())
        out.append(half)

        per_board = {}
        for route in d.datapath.by_handle.values():
            per_board[route.board] = per_board.get(route.board, 0) + 1
        fams = {
            "child": GaugeMetricFamily("ikeoffload_child_sas", "Child SAs installed, by board", labels=["board"]),
            "up": GaugeMetricFamily("ikeoffload_board_up", "1 while the board is ready", labels=["board"]),
            "sas": GaugeMetricFamily("ikeoffload_board_sas", "SAs the host installed on the board", labels=["board"]),
            "slots": GaugeMetricFamily("ikeoffload_board_sa_slots", "the board's SAD size (HELLO)", labels=["board"]),
            "losses": CounterMetricFamily("ikeoffload_board_losses", "board losses detected", labels=["board"]),
            "drops": CounterMetricFamily("ikeoffload_link_frames_dropped", "link frames dropped, by reason",
                                         labels=["board", "reason"]),
            "retries": CounterMetricFamily("ikeoffload_link_retries", "link requests retried", labels=["board"]),
            "failed": CounterMetricFamily("ikeoffload_link_requests_failed", "link requests that got no answer",
                                          labels=["board"]),
            "hb": CounterMetricFamily("ikeoffload_board_heartbeats_sent", "heartbeats sent", labels=["board"]),
            "missed": CounterMetricFamily("ikeoffload_board_heartbeats_missed",
                                          "heartbeat periods without an ack", labels=["board"]),
            "rtt": GaugeMetricFamily("ikeoffload_board_heartbeat_rtt_seconds", "the last heartbeat's round trip",
                                     labels=["board"]),
        }
        for name, st in d.pool.boards.items():
            c = board_counters(st.client)
            h = st.hello
            fams["child"].add_metric([name], per_board.get(name, 0))
            fams["up"].add_metric([name], 1 if st.ready else 0)
            fams["sas"].add_metric([name], st.client.sa_count())
            if h is not None:
                fams["slots"].add_metric([name], h.max_sas)
            fams["losses"].add_metric([name], st.losses)
            for reason, n in c["link"]["frames_dropped"].items():
                fams["drops"].add_metric([name, reason], n)
            fams["retries"].add_metric([name], c["link"]["retries"])
            fams["failed"].add_metric([name], c["link"]["failed"])
            fams["hb"].add_metric([name], c["heartbeats"]["sent"])
            fams["missed"].add_metric([name], c["heartbeats"]["missed"])
            if c["heartbeats"]["rtt_ms"] is not None:
                fams["rtt"].add_metric([name], c["heartbeats"]["rtt_ms"] / 1000)
        out += fams.values()

        inc = CounterMetricFamily("ikeoffload_board_incidents", "IKE SA flushes for a board: losses, operator "
                                  "flushes, boards a reload removed", labels=["board", "reason"])
        for (board, reason), n in sorted(d.recovery.counts.items()):
            inc.add_metric([board, reason], n)
        out.append(inc)
        for key, help_ in (("ike_sas_flushed", "IKE SAs flushed with their board (RFC 7296 §2.4)"),
                           ("deletes_sent", "Deletes sent for flushed IKE SAs")):
            f = CounterMetricFamily("ikeoffload_" + key, help_)
            f.add_metric([], d.stats.get(key, 0))
            out.append(f)
        installs = CounterMetricFamily("ikeoffload_child_installs", "Child SA installs on a board", labels=["result"])
        installs.add_metric(["ok"], d.stats.get("child_installs", 0))
        installs.add_metric(["failed"], d.stats.get("child_install_failures", 0))
        out.append(installs)
        drops = CounterMetricFamily("ikeoffload_host_drops", "packets dropped on the host before a board",
                                    labels=["reason"])
        counted = d.datapath.drops()
        for reason in sorted(set(DROP_REASONS) | set(counted)):        # every reason, 0 until it happens
            drops.add_metric([reason], counted.get(reason, 0))
        out.append(drops)
        for name, counters, help_ in (("datapath", d.datapath.stats, "the data path's counters"),
                                      ("ike_engine", d.engine.stats, "the IKE engine's counters")):
            f = CounterMetricFamily("ikeoffload_" + name, help_, labels=["counter"])
            for k, n in sorted(counters.items()):
                f.add_metric([k], n)
            out.append(f)
        return out


class MetricsServer:
    """The endpoint: prometheus_client's HTTP server on ``address`` ("HOST:PORT"), the daemon's
    collector and the flush / recovery histograms."""

    def __init__(self, daemon, address):
        from prometheus_client import CollectorRegistry, Histogram

        self.address = metrics_address(address)
        self.registry = CollectorRegistry(auto_describe=False)
        self.flush = Histogram("ikeoffload_board_flush_seconds", "board loss detected -> its IKE SAs flushed",
                               registry=self.registry, buckets=FLUSH_BUCKETS)
        self.recovery = Histogram("ikeoffload_board_recovery_seconds",
                                  "board loss detected -> the first new Child SA up", registry=self.registry,
                                  buckets=RECOVERY_BUCKETS)
        self.daemon = daemon
        self._server = None

    def flushed(self, inc):
        self.flush.observe(max(0.0, inc.flushed_at - inc.detected_at))

    def recovered(self, inc):
        self.recovery.observe(max(0.0, inc.child_up_at - inc.detected_at))

    def start(self):
        from prometheus_client import start_http_server

        self.registry.register(DaemonCollector(self.daemon, asyncio.get_running_loop()))
        host, port = self.address
        self._server, _thread = start_http_server(port, host, registry=self.registry)
        log.info("metrics: OpenMetrics on http://%s/metrics", "[%s]:%d" % (host, port) if ":" in host
                 else "%s:%d" % (host, port))

    def close(self):
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
