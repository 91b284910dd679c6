"""The benchmark machinery (`python -m dilconv bench`, dilconv/bench): timing, correctness gate,
n/a and FAIL handling, the network suite's skipping, the report files, the pytest-benchmark
wiring. Small shapes only (the suite itself is not run here)."""
import json
import os
import subprocess
import sys
import types

import pytest
import torch
import torch.nn as nn

import dilconv
from dilconv import registry
from dilconv.bench import networks, ops, run, suite
from dilconv.bench.timing import CpuTimer, measure, paired_speedup

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = suite.OpSpec("tiny_dw_d2", "test", "conv2d", 8, 9, 11, 8, 3, 3, 1, (2, 2), 2, 8, bias=True)


class _DriftTimer(CpuTimer):
    """A clock whose speed changes from repeat to repeat (a noisy neighbour), common to every
    backend of the repeat: the paired ratios must see through it."""

    DRIFT = [1.0, 3.0, 1.0, 7.0, 2.0, 1.5]

    def sample(self, fn, i, number):
        return fn(i) * self.DRIFT[i % len(self.DRIFT)]


def test_measure_interleaves_and_pairs_ratios():
    calls = []

    def make(name, cost):
        def fn(i):
            calls.append(name)
            return cost
        return fn

    res = measure({"a": make("a", 2e-3), "b": make("b", 1e-3)}, _DriftTimer(), budget_s=0.0,
                  min_reps=6, max_reps=6, warmup_s=0.0, min_sample_s=0.0)
    a, b = res["a"], res["b"]
    assert a[0].n == b[0].n == 6
    assert a[0].min <= a[0].q1 <= a[0].median <= a[0].q3 <= a[0].max
    assert a[0].max / a[0].min == 7.0  # the raw times drift 7x ...
    sp = paired_speedup(a[1], b[1])
    assert sp.min == sp.max == 2.0  # ... the paired ratio is exactly b's 2x
    timed = calls[-12:]  # after calibration: every repeat runs both, the order rotating
    assert sorted(timed[0:2]) == ["a", "b"] and timed[0:2] != timed[2:4]


def test_work_counts_flops_and_bytes():
    c = suite.OpCase(suite.conv("t", "g", 4, 10, 6, d=2), 2, "fp32", "nchw", "fwd")
    w = ops.work(c)
    assert w["flops"] == 2 * (2 * 6 * 10 * 10) * 4 * 9
    assert w["bytes"] == 4 * (2 * 4 * 100 + 6 * 4 * 9 + 2 * 6 * 100)
    t = suite.OpCase(suite.convT("u", "g", 4, 5, 3, 2, 2), 1, "fp16", "nchw", "fwd")
    assert ops.out_hw(t) == (10, 10)
    assert ops.work(t)["flops"] == 2 * (4 * 25) * 3 * 4


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("pass_", ["fwd", "fwd+bwd"])
def test_run_case_checks_then_times(layout, pass_):
    case = suite.OpCase(TINY, 2, "fp32", layout, pass_)
    res = run.run_case(case, "cpu", ["auto"], CpuTimer(), budget_s=0.02)
    for name in ("torch", "auto"):
        r = res["results"][name]
        assert r["status"] == "ok" and r["error"] < 1e-5, r
        assert r["time"]["median"] > 0 and r["gbps"] > 0 and r["gflops"] > 0
    assert "speedup" in res["results"]["auto"] and "speedup" not in res["results"]["torch"]
    assert res["results"]["auto"]["path"]  # which backend "auto" ran is recorded


class _Fake(registry.Backend):
    """Stands in for a backend: wrong results, or refusing every problem."""
    device_types = ("cpu",)

    def __init__(self, name, mode):
        self.name, self.mode = name, mode

    def unsupported(self, p):
        return "refuses everything (test)" if self.mode == "refuse" else None

    def conv2d(self, input, weight, bias, stride, padding, dilation, groups):
        y = torch.nn.functional.conv2d(input, weight, bias, stride, padding, dilation, groups)
        return y + 1e-3 * y.abs().max()  # wrong by 1e-3 relative


@pytest.mark.parametrize("mode", ["wrong", "refuse"])
def test_wrong_result_is_fail_and_unsupported_is_na(monkeypatch, mode):
    monkeypatch.setitem(registry._BACKENDS, "cuda-emu", _Fake("cuda-emu", mode))
    case = suite.OpCase(TINY, 1, "fp32", "nchw", "fwd")
    r = run.run_case(case, "cpu", ["cuda-emu"], CpuTimer(), budget_s=0.02)["results"]["cuda-emu"]
    assert "time" not in r  # never timed
    if mode == "wrong":
        assert r["status"] == "FAIL" and r["error"] > r["tol"]
    else:
        assert r["status"] == "n/a" and "refuses everything" in r["reason"]


def test_default_backends_leave_out_test_vehicles():
    names, notes = run.default_backends("cpu", None)
    assert "torch" not in names and "cuda-emu" not in names and "cuda" not in names
    names, _ = run.default_backends("cpu", ["torch", "auto", "cuda"])
    assert names == ["auto"]


def test_tolerance_is_honest():
    assert ops.tolerance(torch.float32, 1, "cpu") < 2e-5
    assert ops.tolerance(torch.float32, 10**4, "cpu") < 1e-4
    assert ops.tolerance(torch.bfloat16, 9, "cpu") < 2e-2


def _tiny_net(**kw):
    torch.manual_seed(0)
    return nn.Sequential(dilconv.AtrousConv2d(3, 6, 3, padding=2, dilation=2), nn.BatchNorm2d(6),
                         nn.ReLU(), nn.Dropout(0.5), dilconv.DepthwiseConv2d(6, 6, 3, padding=1),
                         dilconv.AtrousConv2d(6, 4, 1))


def test_network_suite_runs_and_skips_missing(monkeypatch):
    fake = types.ModuleType("dilconv.models")
    fake.deeplabv3plus = _tiny_net
    fake.MODELS = {"deeplabv3plus": _tiny_net, "brand_new_net": _tiny_net}
    monkeypatch.setitem(sys.modules, "dilconv.models", fake)
    plan = networks.plan("deeplabv3plus_mobilenetv2,unet", False, 17, layouts=("nhwc",))
    assert {p["network"] for p in plan} == {"deeplabv3plus_mobilenetv2", "unet"}
    assert networks.uncovered() == ["brand_new_net"]
    for p in plan:
        res = networks.run_network(p, "cpu", ["auto"], CpuTimer(), budget_s=0.02)
        if p["network"] == "unet":
            assert "no builder 'unet'" in res["skipped"]
            continue
        for name in ("torch", "auto"):
            r = res["results"][name]
            assert r["status"] == "ok" and r["error"] < 1e-4 and r["time"]["median"] > 0, r
            # every one of the three convs is accounted for, whichever way it was dispatched
            assert sum(r["paths"].values()) == 3, r["paths"]
        assert res["results"]["torch"]["paths"] == {"torch": 3}


@pytest.mark.parametrize("mode", ["inference", "train step"])
def test_network_breakdown_records_every_conv(monkeypatch, mode):
    """--breakdown: every dilconv convolution of one pass is recorded (the tiny net makes three:
    atrous 3x3, depthwise 3x3, 1x1), timed per backend, and the Amdahl arithmetic holds."""
    from dilconv.bench import breakdown

    fake = types.ModuleType("dilconv.models")
    fake.deeplabv3plus = _tiny_net
    fake.MODELS = {"deeplabv3plus": _tiny_net}
    monkeypatch.setitem(sys.modules, "dilconv.models", fake)
    plan = [p for p in networks.plan("deeplabv3plus_mobilenetv2", False, 17, layouts=("nchw",))
            if p["mode"] == mode]
    res = networks.run_network(plan[0], "cpu", ["cpu"], CpuTimer(), budget_s=0.02, breakdown=True)
    b = res["breakdown"]
    assert sum(r["count"] for r in b["calls"]) == 3 and len(b["calls"]) == 3
    assert {r["call"].split()[2] for r in b["calls"]} == {"w=6x3x3x3", "w=6x1x3x3", "w=4x6x1x1"}
    for r in b["calls"]:
        assert set(r["ms"]) == {"torch", "cpu"} and all(v > 0 for v in r["ms"].values())
    assert b["conv_best_ms"] <= min(b["conv_ms"].values()) + 1e-9
    net = res["results"]["torch"]["time"]["median"] * 1e3
    rest = max(net - b["conv_ms"]["torch"], 0.0)
    assert b["bound"] == pytest.approx(net / (rest + b["conv_best_ms"]))
    assert b["conv_share"] == pytest.approx(b["conv_ms"]["torch"] / net)
    md = "\n".join(breakdown.markdown(res["id"], mode, b))
    assert "Amdahl" in md and "w=4x6x1x1" in md
    # in the network: each backend's ops timed by category, the three convs in their kinds
    inside = res["in_network"]
    assert set(inside) == {"torch", "cpu"}
    want = {"1x1 conv", "depthwise conv", "other conv"}
    for r in inside.values():
        cats = set(r["ms"])
        assert {f"{k} fwd" for k in want} <= cats, cats
        if mode == "train step":
            assert {f"{k} bwd" for k in want} <= cats, cats
        else:
            assert not any(c.endswith(" bwd") for c in cats), cats
        assert all(v > 0 for v in r["ms"].values())
        assert r["ops_ms"] == pytest.approx(sum(r["ms"].values()))
        assert 0 < r["ops_ms"] <= r["step_ms"] and r["ops_per_step"] >= 3
    net_ms = {k: v["time"]["median"] * 1e3 for k, v in res["results"].items()}
    md = "\n".join(breakdown.markdown_in_network(res["id"], mode, inside, net_ms))
    assert "| 1x1 conv fwd |" in md and "| all ops |" in md and "step without it" in md


def test_in_network_categories():
    """The op categories of the in-network breakdown, on the ops a TorchDispatchMode sees."""
    from dilconv.bench.breakdown import categorise
    aten, dc = torch.ops.aten, torch.ops.dilconv
    x, w1, wdw, w3 = (torch.randn(1, 8, 5, 5), torch.randn(4, 8, 1, 1), torch.randn(8, 1, 3, 3),
                      torch.randn(4, 8, 3, 3))
    conv = aten.convolution.default
    assert categorise(conv, (x, w1, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1)) == "1x1 conv fwd"
    assert categorise(conv, (x, wdw, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 8)) == "depthwise conv fwd"
    assert categorise(conv, (x, w3, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1)) == "other conv fwd"
    assert categorise(conv, (x, w3, None, [1, 1], [1, 1], [1, 1], True, [0, 0], 1)) == "other conv fwd"
    gy = torch.randn(1, 4, 5, 5)
    assert categorise(aten.convolution_backward.default, (gy, x, w1)) == "1x1 conv bwd"
    assert categorise(dc.conv2d_backward.default, (gy, x, wdw)) == "depthwise conv bwd"
    assert categorise(dc.conv2d_clamp.default, (x, w1)) == "1x1 conv fwd"
    assert categorise(dc.conv2d_weight_grad.default, (gy, x, [8, 1, 3, 3])) == "depthwise conv bwd"
    assert categorise(dc.conv2d_input_grad.default, (gy, w3, [1, 8, 5, 5])) == "other conv bwd"
    assert categorise(dc.separable_conv2d.default, (x, wdw)) == "separable conv fwd"
    assert categorise(dc.batch_norm_act.default, (x,)) == "batch norm fwd"
    assert categorise(aten.native_batch_norm_backward.default, (x,)) == "batch norm bwd"
    assert categorise(dc.resize_bilinear_backward.default, (x,)) == "resize bwd"
    assert categorise(aten.upsample_bilinear2d.default, (x,)) == "resize fwd"
    assert categorise(aten.relu_.default, (x,)) == "activation"
    assert categorise(aten.hardtanh_backward.default, (x,)) == "activation"
    assert categorise(aten._log_softmax.default, (x,)) == "loss"
    assert categorise(aten.nll_loss2d_backward.default, (x,)) == "loss"
    assert categorise(aten.add_.Tensor, (x,)) == "other ops"


def test_cli_writes_report(tmp_path):
    out = tmp_path / "r"
    cmd = [sys.executable, "-m", "dilconv", "bench", "--ops", "rx50_g32_1024", "--batch", "1",
           "--dtype", "fp32", "--pass", "fwd", "--budget", "0.05", "--networks", "none",
           "--out", str(out)]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    data = json.loads((out / "results.json").read_text())
    assert data["machine"]["threads_used"] == 2 and "mallopt" in data["machine"]["allocation"]
    assert data["peaks"]["bandwidth_Bps"] > 0 and data["peaks"]["matmul"]["fp32"]["flops_per_s"] > 0
    assert data["peaks"]["cached_bandwidth_Bps"] > 0 and data["peaks"]["cached_copy_bytes"] == 32 << 20
    assert [c["layout"] for c in data["ops"]] == ["nchw", "nhwc"]
    md = (out / "results.md").read_text()
    assert "rx50_g32_1024" in md and "speed-up vs torch" in md and "2 threads used" in md
    assert "GB/s at 16 MiB" in md and "256 MiB each way" in md
    assert (out / "roofline.png").stat().st_size > 1000


def test_bandwidth_reference_follows_the_working_set():
    from dilconv.bench.machine import bandwidth_for
    p = {"bandwidth_Bps": 25e9, "cached_bandwidth_Bps": 40e9, "cached_copy_bytes": 32 << 20}
    assert bandwidth_for(p, 24e6) == 40e9  # a 728ch 65x65 depthwise layer: cache-scale
    assert bandwidth_for(p, 200e6) == 25e9  # beyond twice the small copy: DRAM-scale
    assert bandwidth_for({"bandwidth_Bps": 25e9}, 24e6) == 25e9  # GPU runs: one figure


def test_benchmarks_dir_skipped_without_benchmark_only():
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "benchmarks/", "-p", "no:cacheprovider",
                        "-k", "tiny or rx50_g32_128 and nchw and fwd-"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode in (0, 5), p.stdout + p.stderr
    assert "passed" not in p.stdout.splitlines()[-1], p.stdout


def test_gpu_model_is_labelled_and_degrades(tmp_path, monkeypatch):
    from dilconv import kernels_report
    from dilconv.bench import gpu_model

    # the compilers' reports are kernels_report's business (and take minutes): stand-in rows
    krow = dict(backend="cuda", kernel="dw_fwd", config="T=f32", arch="sm_80", registers=40,
               spill_bytes=0, smem_static=0, smem_dynamic=4096, threads_per_block=256,
               ctas_per_sm=8, occupancy=1.0, default_path=True, file="x.cu")
    monkeypatch.setattr(kernels_report, "cuda_rows", lambda: [krow])
    monkeypatch.setattr(kernels_report, "triton_rows", lambda: ([], "triton: test note"))
    args = types.SimpleNamespace(ops="xc65_dw728_d2", quick=False, out=str(tmp_path))
    assert gpu_model.main(args) == 0
    rep = json.loads((tmp_path / "gpu_model.json").read_text())
    assert "MODEL" in rep["label"] and "no GPU" in rep["label"]
    md = (tmp_path / "gpu_model.md").read_text()
    assert md.startswith("# dilconv static GPU report — MODEL")
    row = next(r for r in rep["roofline"] if r["n"] == 1 and r["dtype"] == "fp16" and r["pass"] == "fwd")
    # 728 x 65 x 65 depthwise, fp16: input + output + weights once; memory-bound on both GPUs
    assert row["min_bytes"] == 2 * (2 * 728 * 65 * 65 + 728 * 9)
    assert row["A100-SXM_limit"] == "memory"
    assert abs(row["A100-SXM_bound_us"] - row["min_bytes"] / 2.04e12 * 1e6) < 1e-9
    assert rep["resources"] == [{k: krow[k] for k in gpu_model.RESOURCE_KEYS}]
    assert "triton: test note" in rep["notes"] and "| dw_fwd | T=f32 | sm_80 | 40 |" in md
    # emulated traffic: measured on cuda-emu when it is usable, else a note (never a crash)
    assert rep["traffic"] or any("traffic" in n for n in rep["notes"])
    for per in rep["traffic"].values():
        for e in per.values():
            assert "ratio" not in e or (e["ratio"] > 0 and 0 < e["efficiency"] <= 1 and e["error"] < 1e-4)


@pytest.mark.parametrize("c,k,g,r,s,stride,pad,dil", [
    (6, 6, 6, 3, 3, 1, (2, 2), 2), (4, 8, 4, 3, 5, 2, (1, 2), 1), (8, 6, 2, 1, 7, 1, (0, 3), 1),
    (8, 8, 4, 3, 3, 3, (3, 3), 3), (5, 7, 1, 2, 2, 2, (0, 1), 1)])
def test_ref_conv2d_matches_torch(c, k, g, r, s, stride, pad, dil):
    x = torch.randn(2, c, 11, 10, dtype=torch.float64, requires_grad=True)
    w = torch.randn(k, c // g, r, s, dtype=torch.float64, requires_grad=True)
    b = torch.randn(k, dtype=torch.float64, requires_grad=True)
    want = torch.nn.functional.conv2d(x, w, b, stride, pad, dil, g)
    got = ops.ref_conv2d(x, w, b, stride, pad, dil, g)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    gy = torch.randn_like(want)
    for a, e in zip(torch.autograd.grad(got, (x, w, b), gy), torch.autograd.grad(want, (x, w, b), gy)):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)


def test_fast_float64_torch_backend_is_exact_and_restored():
    x = torch.randn(1, 6, 9, 9, dtype=torch.float64)
    m = dilconv.DepthwiseSeparableConv2d(6, 4, 3, padding=2, dilation=2, mid_relu=True, backend="torch").double()
    d = dilconv.DepthwiseConv2d(6, 12, 3, stride=2, padding=1, backend="torch").double()
    want = (m(x), d(x))
    with ops.fast_float64_torch():
        got = (m(x), d(x))
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)
    assert "conv2d" not in vars(registry.get_backend("torch"))  # the patch is gone
