"""Ahead-of-time compilation of every Triton kernel and autotune config for sm_80 and sm_90, with
no GPU, and the static resource report built from it.

    from dilconv.triton import aot
    rows = aot.report()          # one dict per (kernel, config, dtype, arch)
    python -m dilconv.triton.aot # the same, as a table

Each kernel module lists representative specialisations (`aot_specs()`: pointer dtypes, the
constexpr flags of its hot path, which integer arguments are 1 — the JIT specialises those the
same way, e.g. the unit stride of a contiguous NCHW tensor). Every autotune config of every spec
is compiled with triton.compile(ASTSource(...), target=GPUTarget("cuda", 80|90, 32)) — PTX and
cubin via the bundled ptxas, no driver needed — for the tensor-core dtype (fp16) and, for kernels
whose shared memory depends on the operand size (tl.dot kernels), also for fp32, the worst case.

Resources come from ptxas itself (TRITON_DUMP_PTXAS_LOG=1): registers per thread and spill bytes
(spill stores + spill loads, per thread); dynamic shared memory is the compiled metadata.shared
(Triton kernels have no static shared memory). Occupancy is a *model*, not a measurement: the
CUDA occupancy formula with these per-SM limits (both archs: 65536 registers, allocated per warp
in units of 256; 2048 threads = 64 warps; 32 CTAs) and shared memory per SM of 164 KiB (sm_80) and
228 KiB (sm_90) with 1 KiB reserved per CTA. The per-CTA shared memory limits the report checks
against are the opt-in maxima: 163 KiB on sm_80 (A100) and 227 KiB on sm_90 (H100), i.e. the SM's
capacity minus the 1 KiB per-CTA reserve.

Compilation runs in worker subprocesses (two, the machine's cores) with TRITON_INTERPRET unset,
so the report also works from an interpreter-mode process. Results are cached as JSON under
build/triton-aot/ (or $DILCONV_TRITON_AOT_CACHE) keyed by the kernel source hash, specialisation,
config, arch and triton version: a repeated report compiles nothing.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

MODULES = ("dilconv.triton.conv_igemm", "dilconv.triton.depthwise", "dilconv.triton.separable",
           "dilconv.triton.conv_transpose")

KIB = 1024
ARCHS = {
    "sm_80": dict(capability=80, smem_per_sm=164 * KIB, smem_per_block=163 * KIB),
    "sm_90": dict(capability=90, smem_per_sm=228 * KIB, smem_per_block=227 * KIB),
}
SMEM_RESERVED_PER_BLOCK = 1 * KIB
REGS_PER_SM = 65536
REG_ALLOC_UNIT = 256        # registers, per warp
MAX_WARPS_PER_SM = 64
MAX_CTAS_PER_SM = 32

_TL_DTYPES = {"fp16": "*fp16", "fp32": "*fp32", "bf16": "*bf16"}


def smem_limit(arch: str) -> int:
    """Bytes of shared memory one CTA may use on `arch` (what the report is checked against)."""
    return ARCHS[arch]["smem_per_block"]


def occupancy(arch: str, registers: int, smem: int, threads: int) -> tuple[int, float]:
    """(CTAs per SM, occupancy in active warps / max warps): the standard occupancy formula."""
    warps = max(1, (threads + 31) // 32)
    regs_per_warp = -(-max(registers, 1) * 32 // REG_ALLOC_UNIT) * REG_ALLOC_UNIT
    by_regs = (REGS_PER_SM // regs_per_warp) // warps
    by_warps = MAX_WARPS_PER_SM // warps
    by_smem = ARCHS[arch]["smem_per_sm"] // (smem + SMEM_RESERVED_PER_BLOCK) if smem else MAX_CTAS_PER_SM
    ctas = max(0, min(by_regs, by_warps, by_smem, MAX_CTAS_PER_SM))
    return ctas, ctas * warps / MAX_WARPS_PER_SM


# ---------------------------------------------------------------------------------------------
# jobs


def _config_name(cfg, dtype: str) -> str:
    kw = ",".join(f"{k}={v}" for k, v in cfg.kwargs.items())
    reg = f",maxnreg={cfg.maxnreg}" if getattr(cfg, "maxnreg", None) else ""
    return f"{kw},warps={cfg.num_warps},stages={cfg.num_stages}{reg},{dtype}"


def jobs() -> list[dict]:
    """Every (module, spec, config, dtype, arch) to compile, as JSON-able dicts."""
    out = []
    for mod_name in MODULES:
        mod = importlib.import_module(mod_name)
        for si, spec in enumerate(mod.aot_specs()):
            kernel = spec["kernel"]
            dtypes = spec.get("dtypes", ("fp16",))
            configs = kernel.all_configs if spec.get("all_configs", True) else [kernel.default_config]
            for cfg in configs:
                ci = kernel.all_configs.index(cfg)
                for dtype in dtypes:
                    for arch in ARCHS:
                        out.append(dict(module=mod_name, spec=si, config=ci, dtype=dtype, arch=arch,
                                        kernel=spec["name"], config_name=_config_name(cfg, dtype),
                                        default=cfg is kernel.default_config))
    return out


def _compile_args(job):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    spec = importlib.import_module(job["module"]).aot_specs()[job["spec"]]
    kernel = spec["kernel"]
    fn = kernel.fn
    cfg = kernel.all_configs[job["config"]]
    constexprs = dict(spec["constexprs"])
    constexprs.update(cfg.kwargs)
    if "DOT_PRECISION" in fn.arg_names:
        constexprs["DOT_PRECISION"] = "ieee"
    for name in spec.get("ones", ()):
        constexprs[name] = 1
    signature, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in spec["pointers"]:
            kind = spec["pointers"][name]
            signature[name] = _TL_DTYPES[job["dtype"] if kind == "x" else kind]
            attrs[(i,)] = [["tt.divisibility", 16]]   # torch allocations are 16-byte aligned
        else:
            signature[name] = "i32"
    src = ASTSource(fn, signature, constexprs, attrs)
    target = GPUTarget("cuda", ARCHS[job["arch"]]["capability"], 32)
    options = dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    if getattr(cfg, "maxnreg", None):
        options["maxnreg"] = cfg.maxnreg
    key = hashlib.sha256(json.dumps(
        [fn.cache_key, sorted(signature.items()), sorted((k, str(v)) for k, v in constexprs.items()),
         sorted(options.items()), job["arch"], triton.__version__], sort_keys=True).encode()).hexdigest()
    return src, target, options, cfg, key


_PTXAS_REGS = re.compile(r"Used (\d+) registers")
_PTXAS_SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def _compile(job) -> dict:
    """Compile one job (in a worker without TRITON_INTERPRET) and return its report row."""
    import triton

    src, target, options, cfg, _ = _compile_args(job)
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        compiled = triton.compile(src, target=target, options=options)
    text = log.getvalue()
    regs = _PTXAS_REGS.findall(text)
    spills = _PTXAS_SPILL.findall(text)
    if not regs:
        raise RuntimeError(f"no ptxas resource line for {job['kernel']} {job['config_name']}:\n{text}")
    registers = int(regs[-1])
    spill = sum(int(a) + int(b) for a, b in spills[-1:])
    smem = int(compiled.metadata.shared)
    threads = cfg.num_warps * 32
    ctas, occ = occupancy(job["arch"], registers, smem, threads)
    return dict(backend="triton", kernel=job["kernel"], config=job["config_name"], arch=job["arch"],
                registers=registers, spill_bytes=spill, smem_static=0, smem_dynamic=smem,
                threads_per_block=threads, ctas_per_sm=ctas, occupancy=round(occ, 4),
                default_path=bool(job["default"]))


def _worker(jobs_path: str, out_path: str) -> int:
    """Compile the jobs in `jobs_path`; each row goes to the cache as soon as it exists (a killed
    run keeps its progress), errors to `out_path`."""
    with open(jobs_path) as f:
        todo = json.load(f)
    cdir = cache_dir()
    errors = []
    for job in todo:
        try:
            row = _compile(job)
        except Exception as e:  # reported, not cached: the caller raises with the message
            errors.append(f"{job['kernel']} [{job['config_name']}] {job['arch']}: {type(e).__name__}: {e}")
            continue
        tmp = cdir / f"{job['key']}.json.tmp"
        tmp.write_text(json.dumps(row))
        tmp.replace(cdir / f"{job['key']}.json")
    with open(out_path, "w") as f:
        json.dump(errors, f)
    return 0


# ---------------------------------------------------------------------------------------------
# the report


def cache_dir() -> Path:
    env = os.environ.get("DILCONV_TRITON_AOT_CACHE")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "build" / "triton-aot"


def _worker_env() -> dict:
    env = dict(os.environ)
    env["DILCONV_TRITON_AOT_CACHE"] = str(cache_dir())
    env.pop("TRITON_INTERPRET", None)
    env["TRITON_DUMP_PTXAS_LOG"] = "1"
    env["TRITON_ALWAYS_COMPILE"] = "1"       # a triton cache hit would skip ptxas and its log
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "") if env.get("PYTHONPATH") else root
    return env


def _job_keys(todo: list[dict]) -> list[dict]:
    """Add the cache key to each job (computed in a clean subprocess when this process runs the
    interpreter: interpreted kernels have no compile-time identity)."""
    from dilconv.triton import _common

    if not _common.INTERPRET:
        for job in todo:
            job["key"] = _compile_args(job)[4]
        return todo
    out = subprocess.run([sys.executable, "-m", "dilconv.triton.aot", "--keys"], env=_worker_env(),
                         input=json.dumps(todo), capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def report(workers: int | None = None, use_cache: bool = True) -> list[dict]:
    """Compile (or read from the cache) every kernel x config x dtype x arch; one row each."""
    todo = _job_keys(jobs())
    cdir = cache_dir()
    cdir.mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict] = {}
    missing = []
    for job in todo:
        path = cdir / f"{job['key']}.json"
        if use_cache and path.exists():
            rows[job["key"]] = json.loads(path.read_text())
        else:
            missing.append(job)
    if missing:
        workers = max(1, min(workers or min(2, os.cpu_count() or 1), len(missing)))
        with tempfile.TemporaryDirectory() as tmp:
            procs = []
            for w in range(workers):
                jp, op = os.path.join(tmp, f"jobs{w}.json"), os.path.join(tmp, f"rows{w}.json")
                with open(jp, "w") as f:
                    json.dump(missing[w::workers], f)
                procs.append((subprocess.Popen(
                    [sys.executable, "-m", "dilconv.triton.aot", "--worker", jp, op],
                    env=_worker_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True), op))
            errors = []
            for proc, op in procs:
                _, err = proc.communicate()
                if proc.returncode != 0:
                    errors.append(f"AOT worker failed ({proc.returncode}):\n{err[-4000:]}")
                    continue
                with open(op) as f:
                    errors += json.load(f)
            if errors:
                raise RuntimeError("Triton AOT compilation failed:\n" + "\n".join(errors[:5]))
        for job in missing:
            rows[job["key"]] = json.loads((cdir / f"{job['key']}.json").read_text())
    return [rows[job["key"]] for job in todo]


def check(rows: list[dict]) -> list[str]:
    """What CI rejects: spills in a default config, shared memory over the arch's per-CTA limit."""
    bad = []
    for r in rows:
        if r["default_path"] and r["spill_bytes"]:
            bad.append(f"{r['kernel']} [{r['config']}] {r['arch']}: {r['spill_bytes']} spill bytes")
        if r["smem_static"] + r["smem_dynamic"] > smem_limit(r["arch"]):
            bad.append(f"{r['kernel']} [{r['config']}] {r['arch']}: {r['smem_dynamic']} B shared "
                       f"memory > {smem_limit(r['arch'])}")
    return bad


def _table(rows: list[dict]) -> str:
    head = f"{'kernel':<18}{'arch':<7}{'regs':>5}{'spill':>7}{'smem':>8}{'thr':>5}{'cta/SM':>7}{'occ':>6}  config"
    lines = [head]
    for r in rows:
        lines.append(f"{r['kernel']:<18}{r['arch']:<7}{r['registers']:>5}{r['spill_bytes']:>7}"
                     f"{r['smem_dynamic']:>8}{r['threads_per_block']:>5}{r['ctas_per_sm']:>7}"
                     f"{r['occupancy']:>6.2f}  {'*' if r['default_path'] else ' '}{r['config']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dilconv.triton.aot", description=__doc__.split("\n")[0])
    ap.add_argument("--worker", nargs=2, metavar=("JOBS", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--keys", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--json", action="store_true", help="print the rows as JSON")
    ap.add_argument("--no-cache", action="store_true", help="recompile everything")
    args = ap.parse_args(argv)
    if args.worker:
        return _worker(*args.worker)
    if args.keys:
        todo = json.loads(sys.stdin.read())
        print(json.dumps(_job_keys(todo)))
        return 0
    rows = report(use_cache=not args.no_cache)
    print(json.dumps(rows, indent=1) if args.json else _table(rows))
    bad = check(rows)
    for b in bad:
        print("FAIL:", b, file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
