"""The virtual MicroPython board's link port: its second pty (tools/vboard).

`vboard` is that board's hardware module (as `machine` is a real board's): the bridge provides
it, and a Ctrl-C on the REPL pty interrupts a wait here as a UART interrupt would on a board."""
import vboard


class VlinkPort:
    def __init__(self, cfg):
        vboard.link_open()

    def read_into(self, buf):
        return vboard.link_read(buf)

    def write(self, data):
        vboard.link_write(data)

    def wait(self, ms):
        vboard.link_wait(ms)

    def flush(self):
        pass                       # link_write hands the bytes over synchronously

    def close(self):
        pass
