"""The benchmark script's own bookkeeping (its measurements are not tests: see bench/)."""

import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def loadBench():
    spec = importlib.util.spec_from_file_location(
        "benchkeywords", os.path.join(ROOT, "bench", "keywords.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_stealShare():
    """Steal is the eighth counter of /proc/stat's cpu line, over the first eight's sum."""
    bench = loadBench()
    before = [100, 0, 50, 800, 0, 0, 0, 50, 0, 0]
    after = [200, 0, 100, 1500, 0, 0, 0, 200, 0, 0]
    assert bench.stealShare(before, after) == 150 / 1000
    assert bench.stealShare(None, after) is None
    assert bench.stealShare(before, before) is None  # no time passed


def test_cpuTicksReadsThisMachine():
    bench = loadBench()
    ticks = bench.cpuTicks()
    if os.path.exists("/proc/stat"):
        assert len(ticks) >= 8 and all(n >= 0 for n in ticks)
    else:
        assert ticks is None
