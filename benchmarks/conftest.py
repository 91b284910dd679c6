"""pytest-benchmark entry to the op suite: `pytest benchmarks/ --benchmark-only`.

Without --benchmark-only these tests are skipped (a plain `pytest` never collects benchmarks/:
pyproject's testpaths is tests/). DILCONV_BENCH_SUITE=full runs every case instead of --quick's;
DILCONV_BENCH_OPS / DILCONV_BENCH_BACKENDS filter like the CLI's --ops / --backends."""
import pytest

from dilconv.bench.timing import pin_malloc

MALLOC_NOTE = pin_malloc()  # before torch's first parallel region


def pytest_collection_modifyitems(config, items):
    if config.getoption("benchmark_only", False):
        return
    skip = pytest.mark.skip(reason="benchmarks run only with --benchmark-only")
    for item in items:
        item.add_marker(skip)


def pytest_report_header(config):
    import torch

    return f"dilconv benchmarks: {torch.get_num_threads()} threads; allocation: {MALLOC_NOTE}"
