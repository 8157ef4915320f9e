# cpython-only: command-line parsing for the simulator, the daemon and the tools (never on a board)
"""argparse with one-line errors: `prog: error: what is wrong (--help shows the usage)`, exit 2."""
import argparse


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, "%s: error: %s (--help shows the usage)\n" % (self.prog, message))
