"""MicroPython entry of the offload firmware (the board's /main.py calls main()).

Reads the board.json that `inv flash` generated from the profile, builds the link port (UART,
RP2040 PIO SPI peripheral, or the virtual board's link), takes the watchdog over from the
boot-time keeper, reports machine.reset_cause() in HELLO, and runs the board core in a tight
loop (firmware/runloop.py). The link key `inv flash` wrote (link.key) authenticates the link
(firmware/link/auth.py); a profile with an authenticated link and no key serves no link at all.
A RESET request is answered, the reply flushed out of the port, a marker left so the next boot
reports RESET_COMMAND, then machine.reset(). Ctrl-C returns to the REPL with the watchdog kept
fed; any other failure resets the board after a second.
"""
import gc
import sys
import time

import machine

from firmware import runloop, watchdog
from firmware.link import messages as m
from firmware.ports import open_port

COMMAND_MARKER = "reset.cmd"   # written just before a host-commanded reset, removed at boot
KEY_FILE = "link.key"          # the board's link key (64 hex digits), written by `inv flash`

# machine.reset_cause() constants -> HELLO reset cause (not every port defines every constant)
_CAUSES = (("PWRON_RESET", m.RESET_POWER_ON), ("HARD_RESET", m.RESET_HARD), ("WDT_RESET", m.RESET_WDT),
           ("DEEPSLEEP_RESET", m.RESET_DEEPSLEEP), ("SOFT_RESET", m.RESET_SOFT))


def reset_cause():
    """The HELLO reset cause of this boot (RESET_COMMAND if the host asked for it)."""
    try:
        import os
        os.remove(COMMAND_MARKER)
        return m.RESET_COMMAND
    except OSError:
        pass
    cause = machine.reset_cause()
    for name, ours in _CAUSES:
        if getattr(machine, name, None) == cause:
            return ours
    return m.RESET_UNKNOWN


def link_key(cfg):
    """The board's link key, or None for a profile whose link is open (link.auth = false).
    Raises OSError or ValueError when the key is needed and missing or malformed."""
    if not cfg.get("link_auth", True):
        return None
    from firmware.link import auth
    with open(KEY_FILE) as f:
        return auth.parse_key(f.read())


def make_board(cfg, now, cause):
    """The board core: the ESP engine's when firmware/esp.py is there, else the link-only core."""
    try:
        from firmware import esp
    except ImportError:
        esp = None
    if esp is not None:
        return esp.make_board(cfg, now, cause)
    from firmware.board import Board
    return Board(cfg, now, reset_cause=cause)


def _commanded_reset(port):
    try:
        with open(COMMAND_MARKER, "w") as f:
            f.write("1")
    except OSError:
        pass
    port.close()
    machine.reset()


def main():
    cfg = watchdog.load_config()
    cause = reset_cause()
    wdt = watchdog.start(cfg)
    watchdog.take_over()
    feed = wdt.feed if wdt is not None else (lambda: None)
    try:
        key = link_key(cfg)
    except (OSError, ValueError) as e:
        # never an open link where the profile wants it authenticated
        watchdog.hand_back()
        print("ikeoffload: no usable link key in %s (%s): flash the board with `inv flash`; the link "
              "stays closed" % (KEY_FILE, e))
        return
    if key is not None:
        cfg["link_key"] = key
    port = open_port(cfg)
    clock = runloop.Clock()
    board = make_board(cfg, clock(), cause)
    gc.collect()
    print("ikeoffload: %s on %s link, reset cause %d, %d bytes free"
          % (cfg["board_id"], cfg["link"]["kind"], cause, gc.mem_free()))
    try:
        if runloop.run(board, port, feed, clock) == "reset":
            _commanded_reset(port)
    except KeyboardInterrupt:
        watchdog.hand_back()
        print("ikeoffload: interrupted; the REPL has the board (the watchdog is kept fed)")
    except Exception as e:
        sys.print_exception(e)
        watchdog.hand_back()
        time.sleep(1)                  # a Ctrl-C here still reaches the REPL
        machine.reset()
