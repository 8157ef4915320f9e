"""The board link's byte transports: what BoardClient asks of one, and which one a board's
profile gets, by its link kind.

A transport moves the link's bytes and nothing else (framing, requests and heartbeats are
firmware/link/ and host/offload/link.py); everything it reports comes through its callbacks, on
the event loop. A new link is two new files and a profile: its transport here (a module with
`transport_for` and `serial_settings`, a line in LINKS), its port on the board (firmware/ports/,
a line in PORTS there), and boards/NAME.toml with that link.kind.
"""
from __future__ import annotations

import importlib
from typing import Callable, Protocol, runtime_checkable

from host.offload.errors import TransportError

__all__ = ["LINKS", "Transport", "TransportError", "for_profile", "serial_settings"]


@runtime_checkable
class Transport(Protocol):
    """A byte stream to one board, driven by the running asyncio loop."""

    on_data: Callable[[bytes], None] | None       # bytes from the board, as they arrive
    on_error: Callable[[Exception], None] | None  # the link failed (the transport is closed by then)

    def open(self) -> None:
        """Start moving bytes (call from the event loop). Raises TransportError (an OSError)
        if the port cannot be opened: the client retries."""

    def write(self, data: bytes) -> None:
        """Queue bytes for the board; never blocks the loop. Nothing happens when not open."""

    def close(self) -> None:
        """Stop and release the port; idempotent. No callbacks after it."""

    @property
    def is_open(self) -> bool:
        ...


# link.kind (firmware/profiles.py LINK_KINDS) -> the module that makes its transport:
#   transport_for(profile, url, *, on_data, on_error) -> Transport
#   serial_settings(profile, url) -> pyserial's {"baudrate", "rtscts"} for a link that is a serial
#       byte stream at that URL, or None (tools that talk to a board with pyserial directly)
LINKS = {
    "uart": "host.offload.serial_port",
    "vboard": "host.offload.serial_port",     # the virtual MicroPython board's link pty
    "sim": "host.offload.serial_port",        # python -m firmware.sim: a pty or socket://
    "spi-pio": "host.offload.spi",            # pyftdi; a pty or socket:// is the simulator standing in
}
DEFAULT_KIND = "uart"                         # no profile: a serial port at 115200 baud


def link_module(profile):
    kind = profile["link"]["kind"] if profile else DEFAULT_KIND
    try:
        name = LINKS[kind]
    except KeyError:
        raise ValueError("link.kind %r has no transport on the host (known: %s)"
                         % (kind, ", ".join(sorted(LINKS)))) from None
    return importlib.import_module(name)


def for_profile(profile, url, *, on_data=None, on_error=None) -> Transport:
    """The transport to a board with this profile (None: a plain serial port) at `url`."""
    return link_module(profile).transport_for(profile, url, on_data=on_data, on_error=on_error)


def serial_settings(profile, url=None):
    """pyserial's settings when the board's link at `url` is a serial byte stream, else None."""
    return link_module(profile).serial_settings(profile, url)
