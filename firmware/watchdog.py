"""The board's watchdog (machine.WDT) and its keeper.

machine.WDT cannot be stopped once started (RP2040 maximum 8388 ms). The firmware's main loop
feeds it, so a hung loop resets the board. But a board is also flashed and debugged through its
REPL, where nothing feeds the WDT: mpremote breaks into main.py with Ctrl-C and soft-resets the
board, and the WDT would reset it in the middle of `inv flash`. So:

- boot.py (every boot and soft reset) calls `boot()`: it starts the WDT from board.json and a
  *keeper* timer (machine.Timer, `wdt_keeper_timer` in the profile: -1 a soft timer on the
  RP2040, a hardware timer id on the ESP32) that feeds it while the REPL has the board.
- main.py's firmware loop stops the keeper and feeds the WDT itself (`take_over()`); when the
  loop is interrupted (Ctrl-C) it hands the WDT back to a keeper (`hand_back()`).

A hung firmware loop is therefore reset by the WDT, and a board at the REPL is not.
"""
import json

try:
    import machine
except ImportError:   # the wasm test runtime: there is no watchdog to keep
    machine = None

CONFIG = "board.json"
_state = {"wdt": None, "timer": None, "cfg": None}


def load_config(path=CONFIG):
    with open(path) as f:
        return json.load(f)


def start(cfg):
    """Start (or re-time) the WDT from the board config; None if the config has no timeout."""
    ms = cfg.get("wdt_ms") or 0
    if not ms or machine is None:
        return None
    wdt = machine.WDT(timeout=ms)
    _state["wdt"] = wdt
    _state["cfg"] = cfg
    return wdt


def _keep(t):
    w = _state["wdt"]
    if w is not None:
        w.feed()


def hand_back():
    """Let a timer feed the WDT (the REPL has the board now)."""
    cfg = _state["cfg"]
    if _state["wdt"] is None or cfg is None or _state["timer"] is not None:
        return
    period = max(50, cfg["wdt_ms"] // 4)
    tid = cfg.get("wdt_keeper_timer", -1)
    t = machine.Timer(tid)
    t.init(mode=machine.Timer.PERIODIC, period=period, callback=_keep)
    _state["timer"] = t


def take_over():
    """The firmware loop feeds the WDT from now on: stop the keeper."""
    t = _state["timer"]
    if t is not None:
        t.deinit()
        _state["timer"] = None


def boot():
    """boot.py: start the WDT and its keeper if the firmware is installed (board.json exists)."""
    try:
        cfg = load_config()
    except (OSError, ValueError):
        return None
    wdt = start(cfg)
    hand_back()
    return wdt
