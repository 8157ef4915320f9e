"""What an HA role change does to IKE (host/standby.py on real engines, in memory, virtual time):
two routers share the virtual address (whichever engine the loopback network delivers it to), a
third engine is the peer. MASTER initiates with INITIAL_CONTACT and the peer keeps one IKE SA;
leaving MASTER sends Deletes and initiates nothing more; the new active side answers the peer's
requests on lost IKE SAs with INVALID_IKE_SPI and ESP on lost Child SAs with INVALID_SPI, and
the peer acts on them at once (RFC 7296 §1.5, §2.4, §2.21.4). The standby's driver drops what
arrives (a real IkeUdpEndpoint on loopback)."""
import asyncio
import socket

from host.config import HINT_RETRANSMIT
from host.ha import HaState
from host.ike.constants import Notify
from host.ike.events import IkeSaDown, IkeSaUp, IkeWarning
from host.ike.message import parse_header, parse_plain
from host.ike.payloads import NotifyPayload
from host.ike_driver import IkeUdpEndpoint
from host.standby import Standby
from tests.test_engine import A_NET, B_NET, A, B, conn, engine, kinds
from tests.test_lifecycle import advance

VIP, PEER = A, B


class VirtualDriver:
    """The IkeUdpEndpoint's side that Standby uses, on virtual time and the loopback network."""

    def __init__(self, net, engine):
        self.net, self.engine = net, engine
        self.local_ip = VIP
        self.accepting = True
        self.now = 0.0

    def call(self, fn, *args, **kw):
        r = fn(*args, now=self.now, **kw)
        self.net.pump(self.now)
        return r


class NoRecovery:
    def cancel_restarts(self):
        pass


def router(net, start=True):
    e = engine(conn(VIP, PEER, "vip.example", "peer.example", A_NET, B_NET,
                    extra={"start_action": "start"} if start else None))
    drv = VirtualDriver(net, e)
    ha = HaState(True, 0.0)
    return e, drv, Standby(ha, e, drv, {}, NoRecovery(), lambda force=False: drv.call(e.start))


def peer(net, **extra):
    e = engine(conn(PEER, VIP, "peer.example", "vip.example", B_NET, A_NET, extra=extra or None))
    net.add(PEER, e)
    return e


def set_role(standby, state, at):
    standby.udp.now = at
    return asyncio.run(standby.set(state))


def test_master_initiates_with_initial_contact_and_the_peer_keeps_one_ike_sa():
    from host.ike.loopback import Network
    net = Network()
    p = peer(net)
    a, _, sa = router(net)
    b, _, sb = router(net)
    net.add(VIP, a)
    set_role(sb, "backup", 0.0)
    assert set_role(sa, "master", 0.0)["active"]
    assert len(a.ike_sas()) == 1 and len(p.ike_sas()) == 1
    old = p.ike_sas()[0]
    # router a dies without a word (kill -9): the address moves to b, keepalived makes it MASTER
    net.engines[VIP] = b
    sent = []
    net.loss = lambda d: sent.append(d) and False
    set_role(sb, "master", 1.0)
    auth = [d for d in sent if d.remote[0] == PEER and parse_header(d.data).exchange == 35]
    assert auth, "no IKE_AUTH from the new active router"
    assert b.ike_sas()[0].initial_contact                     # §2.4: it said so in IKE_AUTH
    assert [s.spi_i for s in p.ike_sas()] == [b.ike_sas()[0].spi_i]
    assert [d.reason for d in kinds(net.events[PEER], IkeSaDown)] == ["replaced (INITIAL_CONTACT)"]
    assert old not in p.ike_sas()


def test_leaving_master_deletes_at_the_peer_and_initiates_nothing_more():
    from host.ike.loopback import Network
    net = Network()
    p = peer(net)
    a, drv, sa = router(net)
    net.add(VIP, a)
    set_role(sa, "master", 0.0)
    assert len(p.ike_sas()) == 1
    st = set_role(sa, "fault", 1.0)
    assert not st["active"] and not drv.accepting
    assert a.ike_sas() == [] and p.ike_sas() == []            # the Delete reached the peer
    assert [d.reason for d in kinds(net.events[PEER], IkeSaDown)] == ["deleted by peer"]
    before = net.delivered
    advance(net, 1.0, 600.0)
    assert net.delivered == before and a.ike_sas() == []      # a standby initiates nothing
    set_role(sa, "backup", 700.0)                             # fault -> backup: nothing to delete
    assert net.delivered == before


def test_the_peer_acts_on_invalid_ike_spi_from_the_new_active_router():
    """The peer initiated (the routers only answer): after the failover its liveness check reaches
    the new active router, which has no such IKE SA and says INVALID_IKE_SPI; the peer moves its
    check to the short hint schedule, gives the old SA up in seconds, and its dpd_action restarts it."""
    from host.ike.loopback import Network
    net = Network()
    p = peer(net, dpd_delay=30, dpd_action="restart")
    a, _, sa = router(net, start=False)
    b, _, sb = router(net, start=False)
    p.ctx.settings.hint_retransmit = HINT_RETRANSMIT        # the daemon's default (host/config.py)
    net.add(VIP, a)
    set_role(sa, "master", 0.0)
    set_role(sb, "backup", 0.0)
    p.strict = True
    p.initiate("gw", 0.0)
    net.pump(0.0)
    assert len(a.ike_sas()) == 1
    net.engines[VIP] = b                                      # a dies; b becomes MASTER
    set_role(sb, "master", 1.0)
    assert b.ike_sas() == []                                  # nothing to start: it waits for the peer
    answers = []
    net.loss = lambda d: (d.remote[0] == PEER and _is_invalid_ike_spi(d.data) and answers.append(d)) and False
    now = advance(net, 1.0, 40.0)                             # the peer's dpd_delay: its check goes out
    assert answers, "the new active router did not answer with INVALID_IKE_SPI"
    assert p.stats["liveness_checks_from_ike_spi_hints"] == 1
    assert [w.text.split(":")[0] for w in kinds(net.events[PEER], IkeWarning)] == ["INVALID_IKE_SPI from %s" % VIP]
    advance(net, now, 45.0)                                   # hint schedule: 0.15 + 0.3 + 0.6 s
    down = kinds(net.events[PEER], IkeSaDown)
    assert down and down[0].restart_ike_id is not None       # gone in seconds, and restarted
    assert len(p.ike_sas()) == 1 and len(b.ike_sas()) == 1
    assert kinds(net.events[VIP], IkeSaUp) or kinds(net.events[PEER], IkeSaUp)


def test_the_new_active_router_answers_the_peers_esp_and_the_peer_checks_at_once():
    """The routers only answer and the peer's dpd_delay is long: the first the new active router
    sees of the peer is ESP for an SPI it never had. Its unprotected INVALID_SPI (§1.5; the
    daemon's default with [ha]) makes the peer check at once on the hint schedule; the router
    answers that check with INVALID_IKE_SPI, and the peer gives the old IKE SA up one hint
    schedule after the ESP (1.05 s) and restarts it — instead of after its dpd_delay (30 s)."""
    from host.ike.loopback import Network
    net = Network()
    p = peer(net, dpd_delay=30, dpd_action="restart")
    a, _, sa = router(net, start=False)
    b, drv_b, sb = router(net, start=False)
    p.ctx.settings.hint_retransmit = HINT_RETRANSMIT
    b.ctx.settings.unprotected_invalid_spi = True
    net.add(VIP, a)
    set_role(sa, "master", 0.0)
    set_role(sb, "backup", 0.0)
    p.strict = True
    p.initiate("gw", 0.0)
    net.pump(0.0)
    net.engines[VIP] = b                                      # a dies; b becomes MASTER
    set_role(sb, "master", 1.0)
    spi = next(iter(p.ike_sas()[0].children.values())).spi_out
    drv_b.now = 1.02
    assert drv_b.call(b.esp_unknown_spi, spi, (PEER, 4500)) == "unprotected"
    warnings = [w.text.split(":")[0] for w in kinds(net.events[PEER], IkeWarning)]
    assert warnings == ["unprotected INVALID_SPI from %s for SPI %08x" % (VIP, spi), "INVALID_IKE_SPI from %s" % VIP]
    total = sum(HINT_RETRANSMIT.delay(k) for k in range(HINT_RETRANSMIT.tries + 1))
    advance(net, 1.02, 1.02 + total - 0.01)
    assert not kinds(net.events[PEER], IkeSaDown)            # nothing unprotected changed anything
    advance(net, 1.02, 1.02 + total + 0.01)
    (down,) = kinds(net.events[PEER], IkeSaDown)
    assert "it answered INVALID_IKE_SPI" in down.reason and down.restart_ike_id is not None
    assert len(p.ike_sas()) == 1 and len(b.ike_sas()) == 1


def _is_invalid_ike_spi(data):
    try:
        payloads, sk = parse_plain(parse_header(data), data)
    except Exception:
        return False
    return sk is None and any(isinstance(x, NotifyPayload) and x.notify_type == Notify.INVALID_IKE_SPI
                              for x in payloads)


def test_the_standby_driver_drops_ike_and_esp():
    async def go():
        e = engine(conn("127.0.0.1", "127.0.0.2", "vip.example", "peer.example", A_NET, B_NET))
        esp = []
        udp = IkeUdpEndpoint(e, "127.0.0.1", 0, 0, on_esp=lambda d, a: esp.append(d))
        socks = {}
        for port in (0, 1):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", 0))
            socks[port] = s
        udp.port, udp.natt_port = 0, 1
        udp._given = socks
        await udp.start()
        udp.accepting = False
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tx.bind(("127.0.0.2", 0))                               # the peer's address
        init = _init_request()
        tx.sendto(init, socks[0].getsockname())
        tx.sendto(b"\x00\x00\x10\x00" + b"\x00" * 40, socks[1].getsockname())     # ESP-in-UDP
        await asyncio.sleep(0.1)
        dropped = udp.stats["standby_dropped"]
        half_open = e.half_open_count()
        udp.accepting = True
        tx.sendto(init, socks[0].getsockname())
        await asyncio.sleep(0.1)
        udp.close()
        tx.close()
        return dropped, half_open, e.half_open_count(), esp

    dropped, half_open_standby, half_open_active, esp = asyncio.run(go())
    assert dropped == 2 and half_open_standby == 0 and esp == []
    assert half_open_active == 1                               # the same request, answered when active


def _init_request():
    """An IKE_SA_INIT request from a real engine (its first datagram)."""
    e = engine(conn("127.0.0.2", "127.0.0.1", "peer.example", "vip.example", B_NET, A_NET))
    e.initiate("gw", 0.0)
    return e.datagrams_to_send()[0].data


def test_a_daemon_not_yet_told_its_role_is_unhealthy_only_where_the_address_already_is():
    """keepalived MASTER over a restarted daemon: the address is here, keepalived will not say
    MASTER again, so the check fails (keepalived goes FAULT and says so). Elsewhere it passes."""
    from host.ike.loopback import Network
    net = Network()
    _, drv, sb = router(net)
    sb.ha.boards(True, 0.0)
    drv.local_ip = "127.0.0.1"                  # an address this host has
    assert sb.address_here() and not sb.status()["healthy"]
    drv.local_ip = "192.0.2.77"                 # one it has not (the standby's view of the VIP)
    assert not sb.address_here() and sb.status()["healthy"]
    drv.local_ip = "127.0.0.1"
    set_role(sb, "fault", 1.0)
    assert not sb.address_here() and sb.status()["healthy"]    # told: the address no longer decides


def test_ikeoffloadctl_ha_verbs_and_the_check_exit_codes(tmp_path):
    """What keepalived runs: `ha <state>` sets the role; `ha check` exits 0 when this router can be
    active, 1 when it cannot (no board), 2 when no daemon answers; a state keepalived never sends
    is refused and changes nothing."""
    import json
    import os
    import sys

    from host.control import ControlServer
    from host.ike.loopback import Network
    net = Network()
    p = peer(net)
    a, _, sa = router(net)
    net.add(VIP, a)
    sa.ha.boards(True, 0.0)
    path = str(tmp_path / "ctl.sock")

    async def handler(req):
        return sa.status() if req.get("state") is None else await sa.set(req["state"])

    async def ctl(*args):
        pr = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "host.control", "--socket", path, *args, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=dict(os.environ, PYTHONPATH=os.getcwd()))
        out, err = await pr.communicate()
        return pr.returncode, out.decode(), err.decode()

    async def go():
        server = ControlServer(path, handler)
        await server.start()
        try:
            steps = [await ctl("ha", "check"), await ctl("--json", "ha", "master"), await ctl("ha", "check"),
                     await ctl("ha", "primary")]
            sa.ha.boards(False, -10.0)                  # every board gone for 10 s
            steps.append(await ctl("ha", "check"))
            steps.append(await ctl("--json", "ha"))
        finally:
            await server.close()
        steps.append(await ctl("ha", "check"))
        return steps

    check0, master, check1, bad, check2, status, gone = asyncio.run(go())
    assert check0[0] == 0 and check1[0] == 0
    assert master[0] == 0 and json.loads(master[1])["state"] == "master" and len(p.ike_sas()) == 1
    assert bad[0] == 2 and "invalid choice" in bad[2]
    assert check2[0] == 1 and "no board ready" in check2[2]
    st = json.loads(status[1])
    assert st["state"] == "master" and not st["healthy"] and [h["to"] for h in st["history"]] == ["master"]
    assert gone[0] == 2 and "cannot reach" in gone[2]
