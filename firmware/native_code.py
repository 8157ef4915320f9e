"""Choosing a board's native code (@micropython.viper, compiled with mpy-cross -march) over the
Python version of the same work: only if it loads and gives the Python version's answers on a
test vector. The wasm MicroPython has no native emitter; CPython cannot load it at all."""


def choose(load, selftest, name, what):
    """The native module `load()` returns when `name` is "native" or None (the default) and it
    loads and passes `selftest(module)`; else None. Asked for "native" by name, a module that does
    not load or disagrees raises instead."""
    if name == "python":
        return None
    try:
        nat = load()
    except Exception:     # ImportError, SyntaxError (no native emitter), ValueError (.mpy arch)
        if name == "native":
            raise
        return None
    if not selftest(nat):
        if name == "native":
            raise ValueError("native %s disagrees with the Python version" % what)
        return None
    return nat
