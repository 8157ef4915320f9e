"""Thin link drivers for the board: each moves bytes, nothing else.

Every port has the same five methods, which is all the main loop (firmware/runloop.py) uses:

    read_into(buf) -> n     bytes from the host, without blocking (0: none)
    write(data)             queue bytes for the host (never blocks for long)
    wait(ms)                sleep until bytes may have arrived or ms passed
    flush()                 return once everything written has left (before a reset)
    close()

`open_port(cfg)` builds the one board.json's link.kind names, from PORTS: "uart" (machine.UART,
ESP32/RP2040), "spi-pio" (an SPI peripheral from an RP2040 PIO program, docs/spi-link.md) or
"vboard" (the virtual MicroPython board's link pty, tools/vboard). A new link is its port module
here and a line in PORTS (the host's side: host/offload/transport.py LINKS).

A port may also have `counters` (a dict of what it dropped, stalls, overruns): main.py puts
them in the board's, so the host reads them with COUNTERS.
"""

# link.kind -> (module of firmware.ports, its port class); imported only when a board uses it
PORTS = {
    "uart": ("uart", "UartPort"),
    "spi-pio": ("spi_rp2", "SpiPioPort"),
    "vboard": ("vlink", "VlinkPort"),
}


def open_port(cfg):
    kind = cfg["link"]["kind"]
    if kind not in PORTS:
        raise ValueError("board.json: link.kind %r has no port on a board" % kind)
    module, name = PORTS[kind]
    return getattr(__import__("firmware.ports." + module, None, None, (name,)), name)(cfg)
