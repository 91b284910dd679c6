"""`python -m dilconv bench --gpu-model`: a static GPU report, no GPU needed. Every figure here is
a MODEL (compiler resource reports, emulated memory traffic, datasheet rooflines), never a
measurement of a GPU.

  1. resources: rows of `dilconv.kernels_report` (CUDA kernels, nvcc -Xptxas -v) and of
     `dilconv.triton.aot.report()` (Triton kernels compiled ahead of time): registers, spills,
     shared memory, occupancy per arch;
  2. emulated traffic: each suite op run on backend "cuda-emu" with the emulation's traffic
     counters (`dilconv.emu_traffic`) on a reduced spatial size: modeled DRAM bytes (32-byte
     sectors, no reuse between requests) vs the minimal bytes, and sector efficiency;
  3. roofline lower bounds for A100 and H100: max(bytes / HBM bandwidth, FLOPs / peak), with the
     minimal bytes and, where step 2 ran, the emulated bytes scaled to the full shape.
Sources that are not available yet are skipped with a note.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import os

import torch

from dilconv.bench import ops, suite

# datasheet figures (dense, no sparsity)
GPUS = {
    "A100-SXM": {"bw": 2.04e12, "fp32": 19.5e12, "tensor16": 312e12},
    "H100-SXM": {"bw": 3.35e12, "fp32": 67e12, "tensor16": 989e12},
}
RESOURCE_KEYS = ("backend", "kernel", "config", "arch", "registers", "spill_bytes", "smem_static",
                 "smem_dynamic", "threads_per_block", "ctas_per_sm", "occupancy", "default_path")
EMU_SIDE = 9  # spatial side of the emulated runs (one OS thread per CUDA thread: keep it small)


def resource_rows() -> tuple[list[dict], list[str]]:
    """CUDA rows from dilconv.kernels_report.cuda_rows() (nvcc -Xptxas -v, cached) and Triton
    rows from its triton_rows() (dilconv.triton.aot.report())."""
    rows, notes = [], []
    try:
        kr = importlib.import_module("dilconv.kernels_report")
    except ImportError as e:
        return [], [f"kernel resources not available yet (dilconv.kernels_report: {e})"]
    try:
        cuda = kr.cuda_rows()
        rows += cuda
        if not cuda:
            notes.append("no CUDA kernel sources (csrc/cuda/*.cu) to report yet")
    except Exception as e:  # nvcc missing, a compile error: the rest of the report still runs
        notes.append(f"CUDA kernel resources unavailable: {type(e).__name__}: {e}")
    try:
        trows, note = kr.triton_rows()
        rows += trows
        if note:
            notes.append(note)
        elif not trows:
            notes.append("Triton kernel resources not available yet (no dilconv.triton.aot)")
    except Exception as e:
        notes.append(f"Triton kernel resources unavailable: {type(e).__name__}: {e}")
    return [{k: r.get(k) for k in RESOURCE_KEYS} for r in rows], notes


def _reduced(spec: suite.OpSpec, cmax: int = 64) -> suite.OpSpec:
    """The spec on an EMU_SIDE x EMU_SIDE map with at most ~cmax channels (the emulation runs one
    OS thread per CUDA thread), keeping its kind: depthwise stays depthwise, channels per group
    stay; dilation clamped so the taps stay inside the small map."""
    cg, kg = spec.c // spec.groups, spec.k // spec.groups
    g = max(1, min(spec.groups, cmax // max(cg, 1)))
    c, k = g * cg, g * kg
    if spec.groups == 1:
        c, k = min(spec.c, cmax), min(spec.k, cmax)
    if spec.op == "separable_conv2d":
        g = c = min(spec.c, cmax)
        k = min(spec.k, cmax)
    if spec.op == "conv_transpose2d":
        return dataclasses.replace(spec, c=c, k=k, groups=g, h=4, w=4)
    d = min(spec.dilation, max(1, (EMU_SIDE - 1) // max(spec.r, spec.s)))
    pad = (d * (spec.r - 1) // 2, d * (spec.s - 1) // 2)
    return dataclasses.replace(spec, c=c, k=k, groups=g, h=EMU_SIDE, w=EMU_SIDE, dilation=d, padding=pad)


def emulated_traffic(specs, dtype: str) -> tuple[dict, list[str]]:
    """spec name -> {layout: {sector_bytes, min_bytes, ratio, efficiency, shape}} for fwd, n=1."""
    try:
        from dilconv import emu_traffic, registry
    except ImportError as e:
        return {}, [f"emulated traffic not available yet (dilconv.emu_traffic: {e})"]
    why = registry.get_backend("cuda-emu").available()
    if why:
        return {}, [f"emulated traffic skipped: backend cuda-emu not usable ({why})"]
    out, notes = {}, []
    for spec in specs:
        small = _reduced(spec)
        for layout in suite.LAYOUTS:
            case = suite.OpCase(small, 1, dtype, layout, "fwd")
            prob = ops.Problem(case, "cpu")
            fn = prob.callable("cuda-emu")
            try:
                with emu_traffic.counting() as t:
                    outs = fn(0)
            except NotImplementedError as e:
                out.setdefault(spec.name, {})[layout] = {"status": "n/a", "reason": str(e).splitlines()[0]}
                continue
            except Exception as e:
                out.setdefault(spec.name, {})[layout] = {"status": "ERROR", "reason": f"{type(e).__name__}: {e}"}
                continue
            err = prob.error(outs)
            minimum = ops.work(case)["bytes"]
            tot = t.totals()
            entry = {"shape": small.desc(), "error": err, "min_bytes": minimum,
                     "sector_bytes": 32 * tot["sectors"], "requests": tot["requests"]}
            if tot["sectors"]:
                entry["ratio"] = entry["sector_bytes"] / minimum
                entry["efficiency"] = tot["useful_bytes"] / (32.0 * tot["sectors"])
            out.setdefault(spec.name, {})[layout] = entry
    return out, notes


def rooflines(specs, traffic: dict) -> list[dict]:
    rows = []
    for spec in specs:
        for dtype in ("fp32", "fp16"):
            for batch in ("1", "train"):
                for pass_ in suite.PASSES:
                    case = suite.expand([spec], (batch,), (dtype,), ("nhwc",), (pass_,))[0]
                    w = ops.work(case)
                    ratio = max((v.get("ratio", 0) for v in traffic.get(spec.name, {}).values()
                                 if isinstance(v, dict)), default=0) if pass_ == "fwd" else 0
                    row = {"op": spec.name, "desc": spec.desc(), "n": case.n, "dtype": dtype,
                           "pass": pass_, "flops": w["flops"], "min_bytes": w["bytes"],
                           "emu_ratio": ratio or None}
                    for gpu, g in GPUS.items():
                        peak = g["fp32"] if dtype == "fp32" else g["tensor16"]
                        t_min = max(w["bytes"] / g["bw"], w["flops"] / peak)
                        row[f"{gpu}_bound_us"] = t_min * 1e6
                        if ratio:
                            row[f"{gpu}_emu_bound_us"] = max(ratio * w["bytes"] / g["bw"], w["flops"] / peak) * 1e6
                        row[f"{gpu}_limit"] = "memory" if w["bytes"] / g["bw"] > w["flops"] / peak else "compute"
                    rows.append(row)
    return rows


def markdown(rep: dict) -> str:
    L = ["# dilconv static GPU report — MODEL figures, not measurements", "",
         "Nothing here ran on a GPU. Resources come from the compilers (ptxas), occupancy from the "
         "CUDA occupancy formula, traffic from the CUDA emulation's counters (32-byte sectors per "
         "warp request, no cache reuse), time bounds from datasheet peaks "
         + ", ".join(f"{k}: {v['bw'] / 1e12:.2f} TB/s, {v['fp32'] / 1e12:.1f} TFLOP/s fp32, "
                     f"{v['tensor16'] / 1e12:.0f} TFLOP/s fp16 tensor" for k, v in GPUS.items()) + ".", ""]
    L += [f"- {n}" for n in rep["notes"]]
    L += ["", "## Kernel resources (MODEL: compiler report)", ""]
    if rep["resources"]:
        L += ["| " + " | ".join(RESOURCE_KEYS) + " |", "|" + "---|" * len(RESOURCE_KEYS)]
        for r in rep["resources"]:
            L.append("| " + " | ".join(f"{r[k]:.2f}" if isinstance(r[k], float) else str(r[k])
                                       for k in RESOURCE_KEYS) + " |")
    else:
        L.append("(no kernel resource rows available)")
    L += ["", f"## Emulated traffic (MODEL: cuda-emu counters, forward, {rep['emu_dtype']}, "
          f"reduced {EMU_SIDE}x{EMU_SIDE} maps, <= 64 channels: indicative of the kernels' access pattern, not of the full shape's reuse)", ""]
    if rep["traffic"]:
        L += ["| op | layout | emulated shape | sector bytes / minimal bytes | sector efficiency | note |",
              "|---|---|---|---|---|---|"]
        for name, per in rep["traffic"].items():
            for lay, e in per.items():
                if "ratio" in e:
                    L.append(f"| {name} | {lay} | {e['shape']} | {e['ratio']:.2f} | {e['efficiency']:.0%} | |")
                else:
                    L.append(f"| {name} | {lay} | {e.get('shape', '–')} | – | – | {e.get('status', '')}: {e.get('reason', '')} |")
    else:
        L.append("(no emulated traffic available)")
    L += ["", "## Roofline lower bounds (MODEL: datasheet peaks; channels_last)", "",
          "| op | n | dtype | pass | GFLOP | min MB | " + " | ".join(
              f"{g} MODEL bound µs | {g} MODEL bound with emulated traffic µs | {g} limit" for g in GPUS) + " |",
          "|" + "---|" * (6 + 3 * len(GPUS))]
    for r in rep["roofline"]:
        cells = [r["op"], str(r["n"]), r["dtype"], r["pass"], f"{r['flops'] / 1e9:.2f}",
                 f"{r['min_bytes'] / 1e6:.1f}"]
        for g in GPUS:
            emu = r.get(f"{g}_emu_bound_us")
            cells += [f"{r[f'{g}_bound_us']:.1f}", f"{emu:.1f}" if emu else "–", r[f"{g}_limit"]]
        L.append("| " + " | ".join(cells) + " |")
    return "\n".join(L) + "\n"


def main(args) -> int:
    specs = suite.select(None if args.ops in (None, "none") else args.ops)
    if args.quick and args.ops is None:
        specs = [s for s in specs if s.quick]
    resources, notes = resource_rows()
    emu_dtype = "fp32"
    torch.set_num_threads(1)  # the emulation runs its own threads
    traffic, tnotes = emulated_traffic(specs, emu_dtype)
    rep = {"label": "MODEL — static analysis and emulation; no GPU was used",
           "gpus": GPUS, "notes": notes + tnotes, "resources": resources,
           "emu_dtype": emu_dtype, "traffic": traffic, "roofline": rooflines(specs, traffic)}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "gpu_model.json"), "w") as f:
        json.dump(rep, f, indent=1)
    with open(os.path.join(args.out, "gpu_model.md"), "w") as f:
        f.write(markdown(rep))
    print(f"wrote gpu_model.json, gpu_model.md to {args.out} (MODEL figures, not measurements)")
    for n in rep["notes"]:
        print("  note:", n)
    return 0
