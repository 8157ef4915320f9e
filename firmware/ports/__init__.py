"""Thin link drivers for the board: each moves bytes, nothing else.

Every port has the same five methods, which is all the main loop (firmware/runloop.py) uses:

    read_into(buf) -> n     bytes from the host, without blocking (0: none)
    write(data)             queue bytes for the host (never blocks for long)
    wait(ms)                sleep until bytes may have arrived or ms passed
    flush()                 return once everything written has left (before a reset)
    close()

A port may also have `counters` (a dict of what it dropped, stalls, overruns): main.py puts
them in the board's, so the host reads them with COUNTERS.

`open_port(cfg)` builds the one board.json asks for: "uart" (machine.UART, ESP32/RP2040),
"spi-pio" (an SPI peripheral from an RP2040 PIO program, docs/spi-link.md) or "vboard" (the
virtual MicroPython board's link pty, tools/vboard).
"""


def open_port(cfg):
    kind = cfg["link"]["kind"]
    if kind == "uart":
        from firmware.ports.uart import UartPort
        return UartPort(cfg)
    if kind == "spi-pio":
        from firmware.ports.spi_rp2 import SpiPioPort
        return SpiPioPort(cfg)
    if kind == "vboard":
        from firmware.ports.vlink import VlinkPort
        return VlinkPort(cfg)
    raise ValueError("board.json: link.kind %r has no port on a board" % kind)
