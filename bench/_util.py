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
