"""Helpers for firmware tests that behave the same on CPython and MicroPython."""


class _Raises:
    def __init__(self, exc, contains):
        self.exc = exc
        self.contains = contains
        self.value = None  # the exception caught, for further asserts

    def _names(self):
        exc = self.exc if isinstance(self.exc, tuple) else (self.exc,)
        return " or ".join(e.__name__ for e in exc)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            raise AssertionError("did not raise " + self._names())
        if not issubclass(exc_type, self.exc):
            return False  # an unexpected exception propagates unchanged: the test fails with it
        if exc is None:  # defensive: a bare class was raised and not instantiated
            exc = exc_type()
        self.value = exc
        if self.contains is not None and self.contains not in str(exc):
            raise AssertionError("%s raised, but %r is not in its message %r"
                                 % (type(exc).__name__, self.contains, str(exc)))
        return True


def raises(exc, func=None, *args, contains=None, **kwargs):
    """Assert that exc (a class or a tuple of classes) is raised; works on CPython and MicroPython.

    Call form returns the exception:   e = raises(ValueError, int, "x")
    Context form keeps it in .value:   with raises(KeyError) as r: d["missing"]
    contains="text" also requires that text in str(exception). Any other exception propagates
    unchanged; no exception at all raises AssertionError.
    """
    ctx = _Raises(exc, contains)
    if func is None:
        return ctx
    with ctx:
        func(*args, **kwargs)
    return ctx.value
