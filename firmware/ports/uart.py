"""machine.UART link port (ESP32, RP2040), with RTS/CTS hardware flow control where wired."""
import select
import time

import machine


class UartPort:
    def __init__(self, cfg):
        link = cfg["link"]
        kw = {"baudrate": link["baud"], "bits": 8, "parity": None, "stop": 1,
              "tx": machine.Pin(link["tx_pin"]), "rx": machine.Pin(link["rx_pin"]),
              "rxbuf": link.get("rxbuf", 4096), "timeout": 0}
        if link.get("txbuf"):
            kw["txbuf"] = link["txbuf"]
        if link.get("rtscts"):
            kw["rts"] = machine.Pin(link["rts_pin"])
            kw["cts"] = machine.Pin(link["cts_pin"])
            kw["flow"] = machine.UART.RTS | machine.UART.CTS
        self.uart = machine.UART(link["uart"], **kw)
        self.poll = select.poll()
        self.poll.register(self.uart, select.POLLIN)

    def read_into(self, buf):
        if not self.uart.any():
            return 0
        return self.uart.readinto(buf) or 0

    def write(self, data):
        mv = memoryview(data)
        while mv:
            n = self.uart.write(mv)
            if n:
                mv = mv[n:]
            else:
                time.sleep_ms(1)     # TX buffer full (or CTS holding us): let it drain

    def wait(self, ms):
        self.poll.poll(ms)

    def flush(self):
        self.uart.flush()

    def close(self):
        self.uart.deinit()
