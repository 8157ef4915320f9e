# boot.py (written by `inv flash`): runs at every boot and soft reset, before main.py.
# Starts the watchdog and the keeper timer that feeds it while the REPL has the board.
try:
    import firmware.watchdog
    firmware.watchdog.boot()
except Exception as e:
    print("boot.py: watchdog not started:", repr(e))
