"""Fuzzing the link at bench scale (`inv bench --only fuzz_link [N]`): the frame decoder, the board
core and the host's link client take N random and mutated inputs (default 1,200,000, over four
seeds: tests/link_fuzz.py) and the hypothesis properties of tests/test_link_fuzz.py run with 20
times their CI examples. No exception may escape; what the input can grow must stay bounded (the
fuzzer checks every 1,000 inputs) and the process's memory must not grow with the count of random
inputs (peak RSS after the first seed's quarter against after all four). The hypothesis phase runs
after and is not in that figure: hypothesis keeps what it generated (its RSS is printed). Writes
bench/results/fuzz_link.json.
"""
import os
import resource
import sys
import time

os.environ.setdefault("LINK_FUZZ_SCALE", "20")

from bench._util import goal, report_goals, table, write  # noqa: E402
from tests.link_fuzz import LinkFuzzer  # noqa: E402

N = int(sys.argv[1]) if len(sys.argv) > 1 else 1_200_000
SEEDS = (101, 102, 103, 104)
RSS_GROWTH_MB = 64
GOALS = {"inputs": "at least 1,000,000 random and mutated inputs and the hypothesis properties, no exception",
         "memory_bounded": "peak RSS grows by less than %d MB from the first quarter of the random inputs to "
                           "their end" % RSS_GROWTH_MB}


def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main():
    per = N // len(SEEDS)
    rows, totals = [], {}
    t0 = time.perf_counter()
    rss_quarter = None
    for i, seed in enumerate(SEEDS):
        f = LinkFuzzer(seed)
        t = time.perf_counter()
        counts = f.run(per)
        took = time.perf_counter() - t
        for k, v in counts.items():
            totals[k] = totals.get(k, 0) + v
        rows.append((seed, per, counts["decoder"], counts["board"], counts["host"], counts["board_sealed"],
                     counts["host_sealed"], f.losses, "%.0f" % (per / took)))
        if i == 0:
            rss_quarter = rss_mb()
    random_s = time.perf_counter() - t0
    rss_random = rss_mb()
    table("Random and mutated inputs (no exception escaped; bounds checked every 1,000)",
          ["seed", "inputs", "decoder", "board", "host", "board: sealed", "host: sealed", "losses", "inputs/s"], rows)

    from tests import test_link_fuzz as props
    t = time.perf_counter()
    for name in sorted(dir(props)):
        fn = getattr(props, name)
        if name.startswith("test_any_") and callable(fn):
            fn()
    prop_s = time.perf_counter() - t
    table("Hypothesis properties (x%s the CI examples)" % os.environ["LINK_FUZZ_SCALE"],
          ["property", "examples"], sorted(props.RUNS.items()))
    rss_end = rss_mb()
    total = per * len(SEEDS) + sum(props.RUNS.values())
    print("%d inputs in %.0f s (random %.0f s, hypothesis %.0f s); peak RSS %.0f MB after the first quarter of "
          "the random inputs, %.0f MB after all of them, %.0f MB after hypothesis"
          % (total, random_s + prop_s, random_s, prop_s, rss_quarter, rss_random, rss_end))
    goals = {"inputs": goal(per * len(SEEDS) >= 1_000_000, "%d random + %d hypothesis" % (per * len(SEEDS),
                                                                                       sum(props.RUNS.values())),
                            ">= 1,000,000 random, no exception"),
             "memory_bounded": goal(rss_random - rss_quarter < RSS_GROWTH_MB, "+%.1f MB" % (rss_random - rss_quarter),
                                    "< %d MB" % RSS_GROWTH_MB)}
    report_goals(goals)
    print("wrote", write("fuzz_link", {"inputs": total, "random": totals, "random_inputs": per * len(SEEDS),
                                       "hypothesis": dict(props.RUNS), "seconds": random_s + prop_s,
                                       "rss_mb": {"after_first_seed": rss_quarter, "after_random": rss_random,
                                                  "after_hypothesis": rss_end},
                                       "goals": goals}))


if __name__ == "__main__":
    main()
