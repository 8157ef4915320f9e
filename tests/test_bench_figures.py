"""Benchmarks as checks: every bench module names its goals (GOALS) and `inv bench --check` fails
on a goal missing or not met; deterministic figures are unit tests; the README's figures are the
ones in bench/results (committed with it)."""
import importlib
import json
from pathlib import Path

import pytest

from bench import _readme, _util
from bench.esp import GOAL_LINK_EFF, batch_for, frame_efficiency
from firmware import profiles

ROOT = Path(__file__).resolve().parent.parent
BENCHES = sorted(p.stem for p in (ROOT / "bench").glob("*.py") if not p.stem.startswith("_") and
                 p.stem != "__init__")


@pytest.mark.parametrize("name", BENCHES)
def test_every_benchmark_names_its_goals(name):
    import sys
    argv, sys.argv = sys.argv, [name]       # as _util.check imports it (some read argv at import)
    try:
        mod = importlib.import_module("bench." + name)
    finally:
        sys.argv = argv
    assert isinstance(mod.GOALS, dict) and mod.GOALS and all(isinstance(v, str) and v for v in mod.GOALS.values())


def test_check_fails_on_a_goal_missing_or_not_met(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(_util, "RESULTS", str(tmp_path))
    from bench import esp
    names = list(esp.GOALS)

    def results(goals):
        (tmp_path / "esp.json").write_text(json.dumps({"goals": goals}))
    results({n: _util.goal(True, 1, ">= 0") for n in names})
    assert _util.check("esp") == 0
    results({names[0]: _util.goal(True, 1, ">= 0")})
    assert _util.check("esp") == 1 and "was not measured" in capsys.readouterr().out
    results({n: _util.goal(n != names[1], 0.46, ">= 0.50") for n in names})
    assert _util.check("esp") == 1 and "NOT MET: 0.46" in capsys.readouterr().out
    (tmp_path / "esp.json").unlink()
    assert _util.check("esp") == 1 and "no results" in capsys.readouterr().out


def test_link_frame_efficiency_of_batched_1400_byte_packets():
    """Deterministic (the frames as the link encodes them): the README's 99.2% and esp's goal."""
    sim = profiles.load("sim")["board"]
    batch = batch_for(1400, sim["max_frame"], sim["max_batch"])
    eff = frame_efficiency(1400, batch)
    assert batch == 11 and eff >= GOAL_LINK_EFF
    assert "%.1f%%" % (100 * eff) == "99.2%"
    assert frame_efficiency(64, batch_for(64, sim["max_frame"], sim["max_batch"])) < eff   # headers weigh more


def test_readme_figures_are_the_committed_bench_results():
    text = (ROOT / "README.md").read_text()
    assert _readme.render(text) == text, "run python -m bench._readme after the benchmark"
    for name in {n for n, _w, _f in _readme.ROWS}:
        assert (ROOT / "bench" / "results" / f"{name}.json").is_file()
