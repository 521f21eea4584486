"""bench/run.py itself: how its table reads a row."""
import os

from conftest import ROOT


def test_bench_row_not_measured_is_skipped_not_failed():
    import importlib.util
    spec = importlib.util.spec_from_file_location("bench_run", os.path.join(ROOT, "bench", "run.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    res = bench.Results()
    res.add("measured", "w", [10.0, 12.0], "ms", 60, "<=")
    res.add("not measured in quick mode", "w", [], "ms", 60, "<=")
    res.add("missed", "w", [100.0], "ms", 60, "<=")
    assert [r["pass"] for r in res.rows] == [True, None, False]
    lines = res.table().splitlines()
    assert "skip" in lines[3] and "MISS" not in lines[3] and "MISS" in lines[4]
