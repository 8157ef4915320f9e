# main.py (written by `inv flash`): runs the offload firmware (firmware/main.py). Ctrl-C returns
# to the REPL with the watchdog kept fed; any other failure resets the board.
import firmware.main
firmware.main.main()
