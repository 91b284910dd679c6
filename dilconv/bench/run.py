"""Running the op suite: check every backend against the float64 reference, then time the ones
that passed, interleaved, against torch."""
from __future__ import annotations

import gc
import math

import torch

from dilconv import registry
from dilconv.bench import ops
from dilconv.bench.suite import DTYPES, OpCase
from dilconv.bench.timing import paired_speedup, measure

TEST_VEHICLES = ("cuda-emu",)  # correct but slow by design: timed only when asked for


def default_backends(device: str, asked: list[str] | None) -> tuple[list[str], list[str]]:
    """(backends to run besides torch, notes on the ones left out)."""
    usable = registry.backends()
    notes = []
    if asked:
        for b in asked:
            if b != "torch" and b not in usable:
                why = registry.get_backend(b).available() if b in registry.NAMES else "unknown backend"
                notes.append(f"{b}: not usable here ({why})")
        return [b for b in asked if b in usable and b != "torch"], notes
    out = []
    for b in usable:
        if b in ("torch",):
            continue
        if b in TEST_VEHICLES:
            notes.append(f"{b}: a test vehicle (the CUDA kernels emulated on the CPU), not timed "
                         f"unless asked for with --backends")
            continue
        if b != "auto" and device not in registry.get_backend(b).device_types:
            continue
        if b == "triton" and device == "cpu":
            notes.append("triton: runs on the CPU only under TRITON_INTERPRET=1 (a test vehicle), "
                         "not timed unless asked for")
            continue
        out.append(b)
    return out, notes


def baselines(device: str) -> dict[str, dict | None]:
    """torch variants: on a GPU cuDNN autotuned and cuDNN deterministic; on the CPU oneDNN."""
    if device == "cuda":
        return {"torch": {"enabled": True, "benchmark": True, "deterministic": False},
                "torch-deterministic": {"enabled": True, "benchmark": False, "deterministic": True}}
    return {"torch": None}


def rotation(case: OpCase, device: str) -> int:
    if device != "cuda":
        return 1
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    s = case.spec
    x_bytes = case.n * s.c * s.h * s.w * torch.empty((), dtype=DTYPES[case.dtype]).element_size()
    return max(1, min(64, math.ceil(2 * l2 / max(x_bytes, 1))))


def run_case(case: OpCase, device: str, backends: list[str], timer, budget_s: float,
             min_reps: int = 7) -> dict:
    w = ops.work(case)
    res = {"id": case.id, "op": case.spec.name, "group": case.spec.group, "desc": case.spec.desc(),
           "kind": case.spec.op, "n": case.n, "dtype": case.dtype, "layout": case.layout,
           "pass": case.pass_, **w, "results": {}}
    try:
        prob = ops.Problem(case, device, rotation(case, device))
    except (RuntimeError, MemoryError) as e:  # e.g. out of memory for a training batch
        res["skipped"] = f"inputs could not be built: {e}"
        return res
    tol = ops.tolerance(DTYPES[case.dtype], w["reduction"], device)
    fns = {}
    for name, cudnn in baselines(device).items():
        fns[name] = prob.callable("torch", cudnn)
    for b in backends:
        fns[b] = prob.callable(b)
    for name in list(fns):
        r = res["results"][name] = {"tol": tol}
        try:
            with ops.record_resolution() as seen:
                outs = fns[name](0)
        except NotImplementedError as e:
            r.update(status="n/a", reason=str(e).splitlines()[0])
        except Exception as e:  # a crash of one backend must not end the run
            r.update(status="ERROR", reason=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        else:
            r["error"] = prob.error(outs)
            if seen:
                r["path"] = sorted(set(seen))
            if not prob.layout_ok(outs):
                r["note"] = "output not channels_last for a channels_last input"
            r["status"] = "ok" if r["error"] <= tol else "FAIL"
            del outs
        if r["status"] != "ok":
            del fns[name]
    if fns:
        timed = measure(fns, timer, budget_s=budget_s, min_reps=min_reps)
        base = timed.get("torch")
        for name, (st, samples) in timed.items():
            r = res["results"][name]
            r["time"] = vars(st)
            r["gbps"] = w["bytes"] / st.median / 1e9
            r["gflops"] = w["flops"] / st.median / 1e9
            if base is not None and name != "torch":
                r["speedup"] = vars(paired_speedup(base[1], samples))
            det = timed.get("torch-deterministic")  # GPU: cuDNN restricted to deterministic algorithms
            if det is not None and name not in ("torch", "torch-deterministic"):
                r["speedup_vs_deterministic"] = vars(paired_speedup(det[1], samples))
    del prob, fns
    gc.collect()
    return res
