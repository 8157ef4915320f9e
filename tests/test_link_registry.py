"""The link registries: a board profile's link kind picks the host's transport
(host/offload/transport.py LINKS) and the board's port (firmware/ports PORTS); every kind a
profile may name has both (the simulator's "sim" has no board port: it is no board), and what a
registered module makes keeps the written Transport protocol."""
import ast
import asyncio
from pathlib import Path

import pytest

from firmware import ports, profiles
from host.offload import transport
from host.offload.serial_port import SerialTransport
from host.offload.spi import SpiTransport
from host.offload.transport import LINKS, Transport, TransportError, for_profile, serial_settings
from tests.spi_peripheral import EmulatedBus, EmulatedPeripheral

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted(p.stem for p in (ROOT / "boards").glob("*.toml"))


def test_every_link_kind_has_a_host_transport_and_a_board_port():
    assert set(LINKS) == set(profiles.LINK_KINDS)
    for kind in profiles.LINK_KINDS:
        mod = transport.link_module({"link": {"kind": kind}})
        assert callable(mod.transport_for) and callable(mod.serial_settings), kind
    assert set(ports.PORTS) == set(profiles.LINK_KINDS) - {"sim"}
    for kind, (module, name) in ports.PORTS.items():    # the ports import machine: read, not import
        tree = ast.parse((ROOT / "firmware" / "ports" / (module + ".py")).read_text())
        assert name in {n.name for n in tree.body if isinstance(n, ast.ClassDef)}, kind


@pytest.mark.parametrize("name", SHIPPED)
def test_each_shipped_profile_gets_a_transport_that_keeps_the_protocol(name):
    prof = profiles.load(name)
    t = for_profile(prof, "/dev/pts/999")              # not opened
    assert isinstance(t, Transport) and isinstance(t, SerialTransport) and not t.is_open
    assert (t.baudrate, t.rtscts) == (prof["link"].get("baud") or 115200, bool(prof["link"].get("rtscts")))


def test_an_spi_board_is_spi_through_its_adapter_and_the_simulator_on_a_pty_or_socket():
    prof = profiles.load("rp2040-pico-spi")
    for url in ("/dev/pts/999", "socket://127.0.0.1:1"):
        t = for_profile(prof, url)
        assert isinstance(t, SerialTransport) and serial_settings(prof, url) == {"baudrate": 115200,
                                                                                "rtscts": False}
    assert serial_settings(prof, "ftdi://ftdi:232h/9") is None and serial_settings(prof) is None
    with pytest.raises(TransportError, match=r"ftdi://ftdi:232h/9"):      # pyftdi, no such adapter
        for_profile(prof, "ftdi://ftdi:232h/9")
    with pytest.raises(TransportError, match=r"ftdi://ftdi:232h/1"):      # none: the profile's spi.host.ftdi_url
        for_profile(prof, None)


def test_the_spi_transport_keeps_the_protocol():
    prof = profiles.load("rp2040-pico-spi")

    async def go():
        bus = EmulatedBus(EmulatedPeripheral(profiles.board_config(prof), prof["spi"]["block_size"]))
        t = SpiTransport(bus, prof["spi"])
        assert isinstance(t, Transport) and not t.is_open
        t.open()
        assert t.is_open
        t.close()
        assert not t.is_open
    asyncio.run(go())


def test_no_profile_is_a_serial_port_and_an_unknown_kind_is_named():
    t = for_profile(None, "/dev/ttyUSB9")
    assert isinstance(t, SerialTransport) and (t.baudrate, t.rtscts) == (115200, False)
    with pytest.raises(ValueError, match=r"'carrier-pigeon' has no transport on the host \(known: sim, "):
        for_profile({"link": {"kind": "carrier-pigeon"}}, "/dev/null")
    with pytest.raises(ValueError, match="has no port on a board"):
        ports.open_port({"link": {"kind": "carrier-pigeon"}})
