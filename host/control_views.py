"""What `ikeoffloadctl list-sas`, `list-conns`, `list-boards` and `stats` show: the daemon's state
as JSON-ready dicts (host/control.py prints them for people; host/metrics.py exports the same
counters).

An IKE SA and its Child SAs come from the engine (names, states, identities, proposals); where
each Child SA lives and what it carried, from its data path route and its board's counters.
"""
import ipaddress
import time

from firmware.link import messages as m
from host.ike.proposals import describe

RESET_CAUSES = {m.RESET_UNKNOWN: "unknown", m.RESET_POWER_ON: "power-on", m.RESET_HARD: "hard",
                m.RESET_WDT: "watchdog", m.RESET_DEEPSLEEP: "deep-sleep", m.RESET_SOFT: "soft",
                m.RESET_COMMAND: "command", m.RESET_SIM: "simulator", m.RESET_CRASH: "crash"}


def transform_name(encr, bits, integ):
    name = {m.ENCR_AES_GCM_16: "AES_GCM_16", m.ENCR_AES_CBC: "AES_CBC",
            m.ENCR_CHACHA20_POLY1305: "CHACHA20_POLY1305"}.get(encr, "ENCR_%d" % encr)
    out = "%s-%d" % (name, bits)
    if integ:
        out += "/" + {m.AUTH_HMAC_SHA2_256_128: "HMAC_SHA2_256_128", m.AUTH_HMAC_SHA2_384_192: "HMAC_SHA2_384_192",
                      m.AUTH_HMAC_SHA2_512_256: "HMAC_SHA2_512_256"}.get(integ, "INTEG_%d" % integ)
    return out


def _wall(t):
    """A time.monotonic() instant as wall-clock seconds (None stays None)."""
    return time.time() - (time.monotonic() - t) if t is not None else None


def child_sa(child, route, counters):
    """One Child SA: the engine's ChildSa, its route, and the board's SaStats by (spi, direction)."""
    encr, bits, integ = route.transform
    si, so = counters.get((route.spi_in, m.DIR_IN)), counters.get((route.spi_out, m.DIR_OUT))
    return {"handle": child.handle, "ike_id": child.ike.ike_id, "name": child.name, "board": route.board,
            "spi_in": route.spi_in, "spi_out": route.spi_out, "mode": child.mode, "encap": route.encap,
            "encr": encr, "key_bits": bits, "integ": integ,
            "local_ts": [str(n) for n in route.local_nets], "remote_ts": [str(n) for n in route.remote_nets],
            "installed_at": _wall(child.installed_at), "state": str(child.state).upper(),
            "bytes_in": si.octets if si else 0, "packets_in": si.packets if si else 0,
            "bytes_out": so.octets if so else 0, "packets_out": so.packets if so else 0,
            "proposal": transform_name(encr, bits, integ)}


def list_sas(engine, pool, datapath, counters):
    """Every IKE SA with the Child SAs it has on a board. counters: (spi, direction) -> SaStats."""
    out = []
    for sa in engine.ike_sas():
        b = pool.owner_of(sa.ike_id)
        kids = [child_sa(c, datapath.by_handle[h], counters) for h, c in sa.children.items()
                if h in datapath.by_handle]
        out.append({"ike_id": sa.ike_id, "conn": sa.conn.name if sa.conn else None,
                    "state": str(sa.state).upper(),
                    "initiator": sa.initiator, "spi_i": sa.spi_i.hex(), "spi_r": sa.spi_r.hex(),
                    "local": "%s[%d]" % sa.local, "remote": "%s[%d]" % sa.remote,
                    "local_id": str(sa.local_id) if sa.local_id else "",
                    "remote_id": str(sa.remote_id) if sa.remote_id else "",
                    "proposal": sa.chosen.describe() if sa.established_at is not None and sa.chosen else "",
                    "established_at": _wall(sa.established_at),
                    "board": b.name if b else None, "children": kids})
    return out


def _ts_text(ts):
    if isinstance(ts, str):              # "dynamic/proto/p0/p1": the IKE address
        _d, proto, p0, p1 = ts.split("/")
        return "dynamic" + ("" if (proto, p0, p1) == ("0", "0", "65535") else "[%s/%s-%s]" % (proto, p0, p1))
    first, last = ipaddress.ip_address(ts.start), ipaddress.ip_address(ts.end)
    nets = list(ipaddress.summarize_address_range(first, last))
    net = str(nets[0]) if len(nets) == 1 else "%s-%s" % (first, last)
    if ts.ip_proto or (ts.start_port, ts.end_port) != (0, 65535):
        net += "[%d/%d-%d]" % (ts.ip_proto, ts.start_port, ts.end_port)
    return net


def list_conns(engine):
    """Every loaded connection as configured (never its PSK or keys), with its IKE SAs' ids."""
    up = {}
    for sa in engine.ike_sas():
        if sa.conn is not None:
            up.setdefault(sa.conn.name, []).append(sa.ike_id)
    out = []
    for name, c in engine.connections.items():
        out.append({
            "name": name, "local_addrs": list(c.local_addrs), "remote_addrs": list(c.remote_addrs),
            "local_port": c.local_port, "remote_port": c.remote_port,
            "proposals": [describe(p) for p in c.proposals],
            "local": {"auth": c.local.auth, "id": str(c.local.id),
                      "cert": c.local.cert.subject.rfc4514_string() if c.local.cert is not None else None},
            "remote": {"auth": c.remote.auth, "id": str(c.remote.id),
                       "cacerts": [ca.subject.rfc4514_string() for ca in c.remote.cacerts]},
            "start_action": c.start_action, "dpd_action": c.dpd_action, "dpd_delay": c.dpd_delay,
            "rekey_time": c.rekey_time, "over_time": c.over_time, "reauth_time": c.reauth_time,
            "keyingtries": c.keyingtries, "encap": c.encap, "ike_sas": sorted(up.get(name, [])),
            "children": [{"name": ch.name, "mode": ch.mode, "local_ts": [_ts_text(t) for t in ch.local_ts],
                          "remote_ts": [_ts_text(t) for t in ch.remote_ts],
                          "esp_proposals": [describe(p) for p in ch.esp_proposals],
                          "start_action": ch.start_action, "close_action": ch.close_action,
                          "rekey_time": ch.rekey_time, "life_time": ch.life_time}
                         for ch in c.children.values()]})
    return out


# the link's drop counters, by where they are kept: the frame decoder, the link key's checks
# (firmware/link/auth.py), the request/reply matching
DECODER_DROPS = ("bad_crc", "bad_cobs", "short", "too_long", "bad_version", "auth_dropped", "unauthenticated")
AUTH_DROPS = ("auth_bad_tag", "auth_replayed", "auth_stale_echo", "auth_no_session")
LINK_DROPS = ("bad_frames", "stale_replies")


def board_counters(client):
    """A board's link and heartbeat counters: frames dropped by reason (CRC, COBS, version,
    authentication, ...), requests retried and failed; heartbeats sent, missed, their RTT."""
    s = client.session
    if s is None:
        return {"link": {"frames_dropped": {}, "frames": 0, "retries": 0, "failed": 0},
                "heartbeats": {"sent": 0, "probes": 0, "missed": 0, "rtt_ms": None, "srtt_ms": None}}
    link = s.link
    dc = link.decoder.counters
    drops = {k: dc.get(k, 0) for k in DECODER_DROPS}
    ac = link.auth.counters if link.auth is not None else {}
    drops.update({k: ac.get(k, 0) for k in AUTH_DROPS})
    drops.update({k: link.counters.get(k, 0) for k in LINK_DROPS})
    return {"link": {"frames_dropped": drops, "frames": dc.get("frames", 0), "sent": link.counters.get("sent", 0),
                     "retries": link.counters.get("retries", 0), "failed": link.counters.get("failed", 0)},
            "heartbeats": {"sent": s.counters.get("heartbeats", 0), "probes": s.counters.get("probes", 0),
                           "missed": s.counters.get("missed_heartbeats", 0),
                           "rtt_ms": s.rtt * 1000 if s.rtt is not None else None,
                           "srtt_ms": link.srtt * 1000 if link.srtt is not None else None}}


def list_boards(boards, pool, recovery):
    """boards: the configured [[board]]s; pool: the BoardPool; recovery: BoardLossRecovery."""
    out = []
    for b in boards:
        st = pool.boards[b.name]
        s = st.client.session
        h = s.hello if s else None
        loss = st.last_loss
        inc = recovery.last_incident(b.name)
        out.append({
            "name": b.name, "port": b.port, "profile": b.profile_name, "state": s.state if s else "closed",
            "boot_id": s.boot_id.hex() if s and s.boot_id else None,
            "uptime_ms": s.last_ack.uptime_ms if s and s.last_ack else None,
            "reset_cause": RESET_CAUSES.get(h.reset_cause) if h else None,
            "firmware": h.fw_version if h else None, "max_sas": h.max_sas if h else None,
            "sa_count": st.client.sa_count(), "ike_sas": len(st.ike_sas),
            "rtt_ms": s.rtt * 1000 if s and s.rtt is not None else None,
            "heartbeat_ms": b.period * 1000, "misses": b.misses,
            "transforms": ["%s/%s" % (transform_name(t.encr, t.key_bits, t.integ), t.backend)
                           for t in (h.transforms if h else [])],
            "losses": st.losses, **board_counters(st.client),
            "last_loss": {"reason": loss.reason, "detail": loss.detail, "at": _wall(loss.at),
                          "ike_sas_flushed": len(inc.ike_sas) if inc else 0} if loss else None,
        })
    return out


def stats(counters, engine, child_sas, datapath, driver, recovery, started_at, pool=None):
    """The daemon's counters and those of its parts (each board's link and heartbeats); the
    incidents' timelines."""
    s = dict(counters)
    if pool is not None:
        s["boards"] = {name: board_counters(b.client) for name, b in pool.boards.items()}
    s.update({"ike_sas": len(engine.ike_sas()), "child_sas": len(child_sas),
              "half_open": engine.half_open_count(), "uptime_s": round(time.time() - started_at, 1)})
    s.update({"datapath_" + k: v for k, v in datapath.stats.items()})
    s["host_drops"] = dict(datapath.drops())
    s["board_queues"] = datapath.queue_state()
    s.update({"udp_" + k: v for k, v in driver.stats.items()})
    s.update({"engine_" + k: v for k, v in engine.stats.items()})
    s["incidents"] = [i.as_dict() for i in recovery.incidents]
    s["monotonic_now"] = time.monotonic()
    return s
