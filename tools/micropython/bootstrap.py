# Runs INSIDE MicroPython (loaded by worker.mjs for run.mjs; MicroPython 1.27 only, not CPython).
# Sets the working directory, sys.path and sys.argv, runs the target as __main__ in __main__'s own
# globals, and leaves the exit status in __main__._run_mjs_rc for the JS side to read.


def _run_mjs_find_module(name, path):
    import os

    rel = name.replace(".", "/")
    for p in path:
        if p.startswith("."):  # '.frozen' holds no sources to run
            continue
        base = (p or os.getcwd()).rstrip("/") + "/" + rel  # absolute, like CPython's sys.argv[0]
        for cand in (base + ".py", base + "/__main__.py"):
            try:
                os.stat(cand)
                return cand
            except OSError:
                pass
    raise ImportError("no module named '%s' (no %s.py or %s/__main__.py on sys.path %r)" % (name, rel, rel, path))


def _run_mjs_main(cfg_json):
    import sys
    import os
    import json
    import builtins

    cfg = json.loads(cfg_json)
    os.chdir(cfg["cwd"])
    for p in reversed(cfg["path"]):
        sys.path.insert(0, p)

    def no_input(*args):
        # The wasm port's stdin is a stub: input() would spin until the run.mjs timeout.
        raise OSError("input() has no stdin under run.mjs")

    builtins.input = no_input

    import __main__

    g = __main__.__dict__
    kind = cfg["kind"]
    target = cfg["target"]
    try:
        if kind == "code":
            sys.argv[:] = ["-c"] + cfg["args"]
            src, fname = target, "<string>"
        else:
            if kind == "script":
                fname = target
            else:
                fname = _run_mjs_find_module(target, sys.path)
                parent = target.rpartition(".")[0]
                if parent:
                    __import__(parent)  # as `python -m`: the parent package is imported first
            with open(fname) as f:
                src = f.read()
            sys.argv[:] = [fname] + cfg["args"]
            g["__file__"] = fname
        for name in ("_run_mjs_main", "_run_mjs_find_module", "_run_mjs_cfg"):
            g.pop(name, None)
        exec(compile(src, fname, "exec"), g)
        rc = 0
    except SystemExit as e:
        code = e.args[0] if e.args else None
        if code is None:
            rc = 0
        elif isinstance(code, int):
            rc = code & 0xFF
        else:
            print(code, file=sys.stderr)
            rc = 1
    except BaseException as e:  # noqa: B036 - report everything, like CPython's top level
        import io

        buf = io.StringIO()
        sys.print_exception(e, buf)
        for line in buf.getvalue().split("\n"):
            if line and not (line.startswith('  File "<stdin>"') and "_run_mjs_" in line):
                sys.stderr.write(line + "\n")  # the traceback minus this bootstrap's own frame
        rc = 1
    return rc


_run_mjs_rc = _run_mjs_main(_run_mjs_cfg)
