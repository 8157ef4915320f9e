"""The error every board-link transport raises (serial, SPI): a port that cannot be opened, a
device that went away, a link that ended."""


class TransportError(OSError):
    pass
