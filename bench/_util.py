"""Shared benchmark helpers: result files and tables."""
import json
import os
import platform
import statistics
import time

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def pct(xs, q):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def write(name, data):
    os.makedirs(RESULTS, exist_ok=True)
    data = dict(data)
    data["machine"] = {"python": platform.python_version(), "cpus": os.cpu_count(),
                       "when": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    path = os.path.join(RESULTS, name + ".json")
    with open(path, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
    return path


def table(title, header, rows):
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = "  ".join("%-*s" % (w, h) for w, h in zip(widths, header))
    print("\n" + title)
    print(line)
    print("-" * len(line))
    for r in rows:
        print("  ".join(("%*s" if isinstance(x, (int, float)) or str(x)[:1].isdigit() else "%-*s") % (w, x)
                        for w, x in zip(widths, r)))


# ---- goals: each bench module names its goals in GOALS = {name: what it asks}; its results file
# holds "goals": {name: {"met": bool, "figure": ..., "want": ...}}; `inv bench --check` fails on
# any goal that is missing from the results or not met.

def goal(met, figure, want):
    """One goal's outcome for the results file (``figure``: what was measured, ``want``: the bound)."""
    return {"met": bool(met), "figure": figure, "want": want}


def report_goals(goals):
    for name, g in goals.items():
        print("goal %-40s %s: %s (want %s)" % (name, "met" if g["met"] else "NOT MET", g["figure"], g["want"]))


def check(name):
    """Exit status of `inv bench --only NAME --check`: 0 if every goal of bench/NAME.py is in its
    results and met, 1 otherwise (what is wrong is printed)."""
    import importlib
    import sys
    argv, sys.argv = sys.argv, [name]       # some modules read their arguments at import time
    try:
        mod = importlib.import_module("bench." + name)
    finally:
        sys.argv = argv
    wanted = getattr(mod, "GOALS", None)
    if not wanted:
        print("%s: no GOALS in bench/%s.py" % (name, name))
        return 1
    path = os.path.join(RESULTS, name + ".json")
    try:
        with open(path) as f:
            got = json.load(f).get("goals", {})
    except (OSError, ValueError) as e:
        print("%s: no results (%s)" % (name, e))
        return 1
    bad = 0
    for g in wanted:
        r = got.get(g)
        if not isinstance(r, dict) or "met" not in r:
            print("%s: goal %s was not measured" % (name, g))
            bad += 1
        elif not r["met"]:
            print("%s: goal %s NOT MET: %s (want %s)" % (name, g, r.get("figure"), r.get("want")))
            bad += 1
        else:
            print("%s: goal %s met: %s (want %s)" % (name, g, r.get("figure"), r.get("want")))
    return 1 if bad else 0


if __name__ == "__main__":
    import sys
    if len(sys.argv) < 3 or sys.argv[1] != "check":
        raise SystemExit("usage: python -m bench._util check NAME...")
    raise SystemExit(max(check(n) for n in sys.argv[2:]))
