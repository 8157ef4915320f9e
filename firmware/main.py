"""MicroPython entry of the offload firmware (the board's /main.py calls main()).

Reads the board.json that `inv flash` generated from the profile, sets the CPU clock it names
(`cpu_hz`: an ESP32 starts at 160 MHz, its profile asks for 240), builds the link port (UART,
RP2040 PIO SPI peripheral, or the virtual board's link), takes the watchdog over from the
boot-time keeper, reports the reset cause in HELLO, and runs the board core in a tight loop
(firmware/runloop.py). The link key `inv flash` wrote (link.key) authenticates the link
(firmware/link/auth.py); a profile with an authenticated link and no key serves no link at all.

- A RESET request is answered, the reply flushed out of the port, a marker left so the next
  boot reports RESET_COMMAND, then machine.reset().
- A MemoryError outside a request (a request's own is answered INTERNAL by the board core) is
  counted and the loop goes on: the heap is collectable again, and a reset would lose the SAD.
- Any other failure resets the board after a second, with a marker so that the next boot
  reports RESET_CRASH: on an RP2040 machine.reset() is a watchdog reboot, which
  machine.reset_cause() cannot tell from the watchdog biting.
- Ctrl-C returns to the REPL with the watchdog kept fed.
Whichever way main() ends, the SAD is flushed first: no key stays in memory for the REPL (or
across the reset: an RP2040's RAM survives a watchdog reboot).
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
CRASH_MARKER = "reset.crash"   # written just before the firmware resets the board after a failure
MARKERS = ((COMMAND_MARKER, m.RESET_COMMAND), (CRASH_MARKER, m.RESET_CRASH))

# machine.reset_cause() constants -> HELLO reset cause (not every port defines every constant)
_CAUSES = (("PWRON_RESET", m.RESET_POWER_ON), ("HARD_RESET", m.RESET_HARD), ("WDT_RESET", m.RESET_WDT),
           ("DEEPSLEEP_RESET", m.RESET_DEEPSLEEP), ("SOFT_RESET", m.RESET_SOFT))


def reset_cause():
    """The HELLO reset cause of this boot: a marker the firmware left before it reset the board
    (RESET_COMMAND, RESET_CRASH), else machine.reset_cause()."""
    import os
    found = None
    for name, cause in MARKERS:
        try:
            os.remove(name)
            found = found or cause
        except OSError:
            pass
    if found:
        return found
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


def set_clock(cfg):
    """The profile's CPU clock (machine.freq), if it names one and the board runs another."""
    hz = cfg.get("cpu_hz")
    if hz and machine.freq() != hz:
        machine.freq(hz)


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


def _reset(port, marker):
    try:
        with open(marker, "w") as f:
            f.write("1")
    except OSError:
        pass
    try:
        port.close()
    finally:
        machine.reset()


def forget(board):
    """Flush the SAD (every SA's keys zeroed) and collect: before the REPL or a reset."""
    if board is not None:
        board.sad.flush()
    gc.collect()


def main():
    cfg = watchdog.load_config()
    cause = reset_cause()
    set_clock(cfg)
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
    pc = getattr(port, "counters", None)
    if pc is not None:              # the port's counters (drops, stalls, overruns) in COUNTERS
        board.counters.update(pc)
        port.counters = board.counters
    gc.collect()
    print("ikeoffload: %s on %s link, reset cause %d, %d MHz, %d bytes free"
          % (cfg["board_id"], cfg["link"]["kind"], cause, machine.freq() // 1000000, gc.mem_free()))
    try:
        while True:
            try:
                if runloop.run(board, port, feed, clock) == "reset":
                    forget(board)
                    _reset(port, COMMAND_MARKER)
                return
            except MemoryError:
                board.counters["memory_errors"] = board.counters.get("memory_errors", 0) + 1
                gc.collect()
    except KeyboardInterrupt:
        forget(board)
        watchdog.hand_back()
        print("ikeoffload: interrupted; SAD flushed; the REPL has the board (the watchdog is kept fed)")
    except Exception as e:
        forget(board)
        sys.print_exception(e)
        watchdog.hand_back()
        time.sleep(1)                  # a Ctrl-C here still reaches the REPL
        _reset(port, CRASH_MARKER)
    finally:
        forget(board)                  # whatever else ends main(): no SA outlives the loop
