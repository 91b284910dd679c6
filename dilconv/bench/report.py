"""Writing a run: results.json (everything), results.md (tables), PNG plots."""
from __future__ import annotations

import json
import os

from dilconv.bench.machine import bandwidth_for


def _ms(t):
    return f"{t * 1e3:.3g}"


def _time_cell(r):
    t = r["time"]
    return f"{_ms(t['median'])} [{_ms(t['q1'])}–{_ms(t['q3'])}]"


def _status_cell(r):
    if r["status"] == "FAIL":
        return f"FAIL (err {r['error']:.1e} > tol {r['tol']:.1e})"
    return f"{r['status']}: {r.get('reason', '')}"


def op_table(cases: list, peaks: dict) -> list[str]:
    lines = ["| case | n | dtype | layout | pass | backend | ms median [IQR] | speed-up vs torch "
             "[IQR] | GB/s | % BW | GFLOP/s | % peak | note |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in cases:
        head = f"| {c['op']} ({c['desc']}) | {c['n']} | {c['dtype']} | {c['layout']} | {c['pass']} "
        if "skipped" in c:
            lines.append(head + f"| – | – | – | – | – | – | – | {c['skipped']} |")
            continue
        peak = peaks["matmul"].get(c["dtype"], {}).get("flops_per_s")
        for name, r in c["results"].items():
            if "time" not in r:
                lines.append(head + f"| {name} | – | – | – | – | – | – | {_status_cell(r)} |")
                continue
            sp = r.get("speedup")
            spc = f"{sp['median']:.2f}× [{sp['q1']:.2f}–{sp['q3']:.2f}]" if sp else "1 (baseline)"
            note = []
            if r.get("path") and r["path"] != [name]:
                note.append("ran " + "+".join(r["path"]))
            if (r["time"].get("faults_per_call") or 0) >= 1:
                note.append(f"{r['time']['faults_per_call']:.0f} page faults/call")
            if r.get("note"):
                note.append(r["note"])
            if r.get("speedup_vs_deterministic"):
                note.append(f"{r['speedup_vs_deterministic']['median']:.2f}× vs torch-deterministic")
            pct_peak = f"{100 * r['gflops'] * 1e9 / peak:.0f}%" if peak else "–"
            bw = bandwidth_for(peaks, c["bytes"])
            lines.append(head + f"| {name} | {_time_cell(r)} | {spc} | {r['gbps']:.1f} | "
                         f"{100 * r['gbps'] * 1e9 / bw:.0f}% | {r['gflops']:.1f} | {pct_peak} | "
                         f"{'; '.join(note)} |")
    return lines


def net_table(nets: list) -> list[str]:
    lines = ["| network | input | mode | backend | ms median [IQR] | speed-up vs torch [IQR] | "
             "error vs float64 | note |", "|---|---|---|---|---|---|---|---|"]
    for n in nets:
        head = f"| {n['network']} | {n.get('input', '–')} | {n.get('mode', '–')} "
        if "skipped" in n:
            lines.append(head + f"| – | – | – | – | {n['skipped']} |")
            continue
        for name, r in n["results"].items():
            if "time" not in r:
                lines.append(head + f"| {name} | – | – | – | {_status_cell(r)} |")
                continue
            sp = r.get("speedup")
            spc = f"{sp['median']:.2f}× [{sp['q1']:.2f}–{sp['q3']:.2f}]" if sp else "1 (baseline)"
            path = ", ".join(f"{k}×{v}" for k, v in sorted(r.get("paths", {}).items()))
            lines.append(head + f"| {name} | {_time_cell(r)} | {spc} | {r['error']:.1e} | "
                         f"{'convs ran on ' + path if path else ''} |")
    return lines


def markdown(run: dict) -> str:
    m, p = run["machine"], run["peaks"]
    mm = ", ".join(f"{k} {v['flops_per_s'] / 1e9:.0f} GFLOP/s" for k, v in p["matmul"].items())
    out = [f"# dilconv benchmark ({m['device']})", "",
           f"Command: `{run['command']}`  ", f"Date: {run['date']}  ",
           f"Machine: {m['cpu_model']}, {m['cpu_cores']} cores, **{m['threads_used']} threads used**"
           + (f"; GPU {m['gpu']} ({m['gpu_sm']})" if m.get("gpu") else "") + "  ",
           f"Versions: torch {m['torch']}, dilconv {m['dilconv']} ({m['dilconv_commit']}), "
           f"python {m['python']}, CPU capability {m['cpu_capability']} (torch), "
           f"{m.get('dilconv_cpu_isa')} (dilconv's CPU kernels)  ",
           f"Allocation: {m['allocation']}  ",
           f"Load average (1/5/15 min) at start {m.get('loadavg_start')}, at end "
           f"{m.get('loadavg_end')} on {m['cpu_cores']} cores; wall time {run.get('wall_s', 0):.0f} s"
           + (" — a shared, busy machine: absolute times are inflated and noisy; the interleaved "
              "ratios are the figures to read" if (m.get("loadavg_start") or [0])[0] > m["cpu_cores"]
              else "") + "  ",
           f"Measured peaks (same run): copy {p['bandwidth_Bps'] / 1e9:.1f} GB/s "
           f"({p['copy_bytes'] / 2**21:.0f} MiB each way, read + write)"
           + (f", {p['cached_bandwidth_Bps'] / 1e9:.1f} GB/s at {p['cached_copy_bytes'] / 2**21:.0f} MiB"
              if "cached_bandwidth_Bps" in p else "")
           + f", matmul {mm}  ", "",
           "Method: every backend's result is checked against a float64 torch reference before "
           "it is timed (FAIL = outside tolerance, not timed; n/a = the backend does not handle the "
           "problem). Backends are timed interleaved in one process (each repeat runs each "
           "backend once, rotating the order); time = median seconds per call with the "
           "inter-quartile range; speed-up = median of the per-repeat ratios torch/backend. "
           "GB/s and GFLOP/s use the minimal bytes (each operand once) and 2 FLOPs per "
           "multiply-add; % BW compares GB/s with the copy of the nearer size (the smaller copy "
           "for cases moving up to twice its bytes). `torch` is torch.nn.functional (oneDNN on the CPU, cuDNN on a GPU).", ""]
    for n in run.get("notes", []):
        out.append(f"- {n}")
    if run.get("ops"):
        out += ["", "## Ops", ""] + op_table(run["ops"], p)
    if run.get("networks"):
        out += ["", "## Networks", "",
                "One model object runs under every backend. In inference under a dilconv backend "
                "each conv -> BatchNorm (eval) [-> ReLU/ReLU6] of the network runs as one conv "
                "with the BatchNorm folded into its weights and bias "
                "(dilconv.ConvNormActSequential); under `torch` the BatchNorms run as torch.nn "
                "runs them (eager PyTorch). Where `auto` sends such a conv to oneDNN in "
                "channels_last inference it calls oneDNN's inference convolution with weights "
                "packed once and the activation fused (`onednn-packed` in the note: torch's "
                "oneDNN, as Inductor's CPU freezing uses it, not a dilconv kernel), in NCHW "
                "inference the same call with plain weights where an activation follows "
                "(`onednn-fused`). The "
                "networks' bilinear upsampling runs dilconv's resize kernel under a dilconv "
                "backend (dilconv.functional.resize_bilinear; torch's F.interpolate under "
                "`torch`), in inference and training, and in training each BatchNorm "
                "[-> ReLU/ReLU6] after a conv runs as dilconv's batch_norm_act (batch "
                "statistics, running statistics updated as torch.nn does) where torch runs "
                "BatchNorm and the activation as separate passes. A training step's loss is "
                "dilconv.losses.cross_entropy at the input's size: dilconv's cross-entropy "
                "op under a dilconv backend (one pass over the logits forward, one backward), "
                "torch's F.cross_entropy under `torch`; for the DeepLab/FCN models the loss "
                "takes the logits before the final upsampling (the model's `resize_output = "
                "False`, the loss's `upsample=\"bilinear\"`) and upsamples them itself: torch's "
                "F.interpolate then F.cross_entropy under `torch` (the ops the model ran), "
                "dilconv's resize_cross_entropy under a dilconv backend (the upsampled logits "
                "made and consumed block by block in cache, never stored).", ""] + net_table(run["networks"])
        inside = [n for n in run["networks"] if n.get("in_network")]
        if inside:
            from dilconv.bench.breakdown import markdown_in_network

            out += ["", "## Where the network time goes (in the network, by op category)", "",
                    "Each op of a step (aten, dilconv and mkldnn ops as a TorchDispatchMode sees "
                    "them, below autograd) timed where it runs, 3 steps a backend after one "
                    "untimed, summed by category and divided by the steps; a convolution's kind "
                    "is its weight's shape (1x1, depthwise: one input channel a group). The "
                    "step under the timer includes the timer's own cost (a Python call per op); "
                    "step minus all ops is Python, autograd's bookkeeping and that cost.", ""]
            for n in inside:
                net_ms = {b: r["time"]["median"] * 1e3 for b, r in n["results"].items()
                          if r.get("time")}
                out += markdown_in_network(n["id"], n["mode"], n["in_network"], net_ms)
        parts = [n for n in run["networks"] if n.get("breakdown")]
        if parts:
            from dilconv.bench.breakdown import markdown

            out += ["", "## Where the network time goes (isolated convolutions, estimates)", ""]
            for n in parts:
                out += markdown(n["id"], n["mode"], n["breakdown"])
    if run.get("plots"):
        out += ["", "## Plots", ""] + [f"![{os.path.splitext(f)[0]}]({f})" for f in run["plots"]]
    return "\n".join(out) + "\n"


def plots(run: dict, outdir: str) -> list[str]:
    """speed-up bars per op (one figure per pass) and a roofline of every timed result."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    cases = [c for c in run.get("ops", []) if "results" in c]
    others = sorted({b for c in cases for b in c["results"] if b != "torch"})
    for pass_ in ("fwd", "fwd+bwd"):
        sel = [c for c in cases if c["pass"] == pass_]
        if not sel or not others:
            continue
        fig, ax = plt.subplots(figsize=(9, 1.5 + 0.28 * len(sel) * len(others)))
        labels, y = [], 0
        for c in sel:
            for b in others:
                r = c["results"].get(b, {})
                sp = r.get("speedup")
                if sp:
                    # from 1 (= torch) to the speed-up: right is faster, left is slower
                    ax.barh(y, sp["median"] - 1, left=1, color=f"C{others.index(b)}")
                    ax.errorbar(sp["median"], y, xerr=[[sp["median"] - sp["q1"]], [sp["q3"] - sp["median"]]],
                                color="k", lw=0.8)
                else:
                    ax.text(1, y, f" {r.get('status', '–')}", va="center", fontsize=7)
                labels.append(f"{c['op']} n{c['n']} {c['dtype']} {c['layout']} [{b}]")
                y += 1
        ax.axvline(1.0, color="k", lw=0.8)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlabel("speed-up vs torch (median of paired ratios, IQR bars; >1 = faster)")
        ax.set_title(f"{run['machine']['device']}: {pass_}, {run['machine']['threads_used']} threads")
        fig.tight_layout()
        name = f"speedup_{pass_.replace('+', '_')}.png"
        fig.savefig(os.path.join(outdir, name), dpi=90, bbox_inches="tight")
        plt.close(fig)
        files.append(name)
    if cases:
        p = run["peaks"]
        fig, ax = plt.subplots(figsize=(7, 5))
        ai = [c["flops"] / c["bytes"] for c in cases]
        xs = [min(ai) / 2, max(ai) * 2]
        bw = p["bandwidth_Bps"]
        for dt, m in p["matmul"].items():
            knee = m["flops_per_s"] / bw
            ax.plot([xs[0], knee, max(xs[1], knee * 2)],
                    [xs[0] * bw / 1e9, m["flops_per_s"] / 1e9, m["flops_per_s"] / 1e9],
                    lw=1, label=f"measured roof ({dt} matmul, copy BW)")
        backends = sorted({b for c in cases for b, r in c["results"].items() if "gflops" in r})
        for i, b in enumerate(backends):
            pts = [(c["flops"] / c["bytes"], c["results"][b]["gflops"]) for c in cases
                   if "gflops" in c["results"].get(b, {})]
            ax.scatter(*zip(*pts), s=14, label=b, marker="os^vD<>"[i % 7])
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("arithmetic intensity (FLOP per minimal byte)")
        ax.set_ylabel("achieved GFLOP/s")
        ax.set_title(f"roofline, {run['machine']['device']}, {run['machine']['threads_used']} threads")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(outdir, "roofline.png"), dpi=90, bbox_inches="tight")
        plt.close(fig)
        files.append("roofline.png")
    return files


def write(run: dict, outdir: str, with_plots: bool = True) -> list[str]:
    os.makedirs(outdir, exist_ok=True)
    # suite order, forward before forward+backward (they are run the other way round)
    run["ops"] = sorted(run.get("ops", []), key=lambda c: (c.get("order", 0), c["pass"] != "fwd"))
    if with_plots:
        run["plots"] = plots(run, outdir)
    with open(os.path.join(outdir, "results.json"), "w") as f:
        json.dump(run, f, indent=1, default=str)
    with open(os.path.join(outdir, "results.md"), "w") as f:
        f.write(markdown(run))
    return ["results.json", "results.md", *run.get("plots", [])]
