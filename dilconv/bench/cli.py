"""`python -m dilconv bench`: the op and network suites, every usable backend against torch.

    python -m dilconv bench --quick                      # < 2 minutes on a 2-core CPU
    python -m dilconv bench --ops aspp,mnv2 --dtype fp32 --layout nhwc --out /tmp/b
    python -m dilconv bench --gpu-model                  # static GPU report (MODEL figures)
"""
from __future__ import annotations

import datetime
import shlex
import sys
import time


def add_arguments(p):
    p.add_argument("--quick", action="store_true", help="anchor shapes only, fp32, batch 1, short timing")
    p.add_argument("--ops", default=None, help="comma-separated substrings of op names/groups; 'none' skips the op suite")
    p.add_argument("--networks", default=None, help="comma-separated network names; 'none' skips the network suite")
    p.add_argument("--breakdown", action="store_true",
                   help="networks: also time each of their convolutions in isolation per backend "
                        "(conv share of the network, Amdahl bound on the speed-up)")
    p.add_argument("--backends", default=None, help="comma-separated backends to time against torch "
                   "(default: every usable one but the test vehicles cuda-emu and CPU triton)")
    p.add_argument("--dtype", default=None, help="fp32,fp16,bf16 (default all; --quick: fp32)")
    p.add_argument("--layout", default=None, help="nchw,nhwc (default both)")
    p.add_argument("--batch", default=None, help="comma list of '1' and 'train' (default both; --quick: 1)")
    p.add_argument("--pass", dest="passes", default=None, help="fwd,fwd+bwd (default both)")
    p.add_argument("--device", default=None, choices=("cpu", "cuda"), help="default: cuda if visible")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads); default 2")
    p.add_argument("--budget", type=float, default=None, help="seconds of timing per case (default 1.0; --quick 0.25)")
    p.add_argument("--net-size", type=int, default=None,
                   help="network input side (default: each network's own, e.g. 513; --quick 97)")
    p.add_argument("--out", default="bench-results", help="output directory (default ./bench-results)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--gpu-model", action="store_true",
                   help="static GPU report instead: kernel resources, emulated traffic, roofline bounds (MODEL)")


def _csv(s, default):
    return tuple(x.strip() for x in s.split(",") if x.strip()) if s else default


def main(args) -> int:
    from dilconv.bench.timing import pin_malloc

    malloc_note = pin_malloc()  # before torch's first parallel region

    import torch
    from tqdm import tqdm

    from dilconv.bench import machine, networks, report, run, suite
    from dilconv.bench.timing import timer_for

    if args.gpu_model:
        from dilconv.bench import gpu_model
        return gpu_model.main(args)

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(args.threads)
    quick = args.quick
    budget = args.budget if args.budget is not None else (0.2 if quick else 1.0)
    dtypes = _csv(args.dtype, ("fp32",) if quick else tuple(suite.DTYPES))
    bad = [d for d in dtypes if d not in suite.DTYPES]
    if bad:
        print(f"unknown --dtype {bad}; choose from {', '.join(suite.DTYPES)}", file=sys.stderr)
        return 2
    layouts = _csv(args.layout, suite.LAYOUTS)
    passes = _csv(args.passes, suite.PASSES)
    batches = _csv(args.batch, ("1",) if quick else ("1", "train"))
    backends, notes = run.default_backends(device, list(_csv(args.backends, ())) or None)

    specs = [] if args.ops == "none" else suite.select(args.ops)
    if quick and args.ops is None:
        specs = [s for s in specs if s.quick]
    cases = suite.expand(specs, batches, dtypes, layouts, passes)
    # networks: fp32 on the CPU unless --dtype asks (whole-network fp16/bf16 is a GPU use)
    net_dtypes = dtypes if (args.dtype or device == "cuda") else ("fp32",)
    nets = [] if args.networks == "none" else networks.plan(args.networks, quick, args.net_size,
                                                             net_dtypes, layouts, device)
    if nets:
        notes += [f"dilconv.models builder {b!r} is not in the network suite" for b in networks.uncovered()]

    timer = timer_for(device)
    t0 = time.perf_counter()
    cmd = shlex.join(sys.argv[1:])
    out = {"command": "python -m dilconv " + cmd if sys.argv[0].endswith("__main__.py") else cmd,
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "machine": machine.info(device, torch.get_num_threads(), malloc_note),
           "backends_timed": ["torch", *backends], "notes": notes, "ops": [], "networks": []}
    print(f"dilconv bench on {device} ({out['machine']['cpu_model']}, {torch.get_num_threads()} threads): "
          f"torch vs {', '.join(backends) or '(no other usable backend)'}; "
          f"{len(cases)} op cases, {len(nets)} network runs")
    for n in notes:
        print("  note:", n)
    out["peaks"] = machine.peaks(device, dtypes, 2 * budget)
    with tqdm(total=len(cases) + len(nets), unit="case", dynamic_ncols=True) as bar:
        for i, c in enumerate(cases):
            bar.set_postfix_str(c.id)
            out["ops"].append(run.run_case(c, device, backends, timer, budget,
                                            min_reps=5 if quick else 7))
            out["ops"][-1]["order"] = i // len(passes)  # passes are innermost in `cases`
            bar.update()
        for n in nets:
            bar.set_postfix_str(n["id"])
            out["networks"].append(networks.run_network(n, device, backends, timer, budget,
                                                        min_reps=3 if quick else 5,
                                                        breakdown=args.breakdown))
            bar.update()
    out["wall_s"] = time.perf_counter() - t0
    out["machine"]["loadavg_end"] = machine._loadavg()
    files = report.write(out, args.out, with_plots=not args.no_plots)
    print(f"wrote {', '.join(files)} to {args.out} ({out['wall_s']:.0f} s)")
    fails = [f"{c['id']} [{b}]" for c in out["ops"] for b, r in c.get("results", {}).items()
             if r["status"] in ("FAIL", "ERROR")]
    fails += [f"{n['id']} [{b}]" for n in out["networks"] for b, r in n.get("results", {}).items()
              if r["status"] in ("FAIL", "ERROR")]
    if fails:
        print(f"{len(fails)} results FAILED/ERRORED (see the report): " + ", ".join(fails[:10]))
    return 1 if fails else 0
