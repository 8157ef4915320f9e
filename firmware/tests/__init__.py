"""The firmware's own tests: run by pytest on CPython and by firmware/tests/runner.py on both CPython and
MicroPython (see runner.py for the conventions a test module must follow)."""
