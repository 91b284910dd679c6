"""The op suite under pytest-benchmark: one benchmark per (case, backend), grouped by case so
`--benchmark-group-by=group` shows torch and each dilconv backend side by side. Each result is
checked against the float64 reference before it is timed."""
import os

import pytest
import torch

from dilconv.bench import ops, run, suite

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
THREADS = int(os.environ.get("DILCONV_BENCH_THREADS", "2"))


def _cases():
    if os.environ.get("DILCONV_BENCH_SUITE", "quick") == "full":
        return suite.expand(suite.select(os.environ.get("DILCONV_BENCH_OPS")))
    return [c for c in suite.quick_cases()
            if c.spec in suite.select(os.environ.get("DILCONV_BENCH_OPS"))]


def _backends():
    asked = os.environ.get("DILCONV_BENCH_BACKENDS")
    others, _ = run.default_backends(DEVICE, asked.split(",") if asked else None)
    return list(run.baselines(DEVICE)) + others


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("case", _cases(), ids=lambda c: c.id)
def test_op(benchmark, case, backend):
    torch.set_num_threads(THREADS)
    prob = ops.Problem(case, DEVICE, run.rotation(case, DEVICE))
    base = run.baselines(DEVICE)
    fn = prob.callable("torch", base[backend]) if backend in base else prob.callable(backend)
    try:
        outs = fn(0)
    except NotImplementedError as e:
        pytest.skip(f"n/a: {e}")
    w = ops.work(case)
    tol = ops.tolerance(suite.DTYPES[case.dtype], w["reduction"], DEVICE)
    err = prob.error(outs)
    assert err <= tol, f"{backend} wrong on {case.id}: error {err:.2e} > tolerance {tol:.2e}"
    benchmark.group = case.id
    benchmark.extra_info.update(flops=w["flops"], min_bytes=w["bytes"], error=err, threads=THREADS)
    if DEVICE == "cuda":
        def timed(i=[0]):
            i[0] += 1
            fn(i[0])
            torch.cuda.synchronize()
        benchmark(timed)
    else:
        benchmark(fn, 0)
