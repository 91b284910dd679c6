"""`python -m dilconv kernels`: static resource report of every CUDA kernel instantiation.

No GPU is needed or used. For each csrc/cuda/*.cu and each target arch (sm_80, sm_90) the file is
compiled with nvcc to a cubin with `-Xptxas -v` (the same defines as the extension build); ptxas'
lines give registers, spill stores/loads and static shared memory per kernel, the kept PTX gives
`.maxntid` (from __launch_bounds__). Occupancy (resident CTAs per SM, active warps / max warps) is
computed on the host with the toolkit's cuda_occupancy.h through a tiny compiled helper, for the
A100 (sm_80) and H100 (sm_90) SM configurations. Rows from the Triton backend are merged when
`dilconv.triton.aot.report()` exists. All numbers are static/modeled: no run time is implied.

Annotations in a .cu file (comment lines anywhere in it):
    // dc:default <regex>                    kernels whose demangled name matches are on the
                                             default path (if a file has none, all its kernels are)
    // dc:launch <regex> [threads=N] [smem=B]  block size and dynamic shared memory (bytes, the
                                             largest the launch code requests) of matching kernels;
                                             threads defaults to __launch_bounds__' maxntid

`--check` fails (exit 1) on: a spill in a default-path kernel; static shared memory above 48 KiB;
static + dynamic shared memory above the arch's per-block opt-in limit; a kernel that cannot be
resident at all (0 CTAs per SM). Results are cached in build/kernels-report/ keyed by the sources,
headers, flags and nvcc version.
"""
from __future__ import annotations

import concurrent.futures
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from typing import Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE_DIR = os.path.join(ROOT, "build", "kernels-report")
ARCHS = ("sm_80", "sm_90")
# per-SM/per-block limits used for --check and the occupancy helper (A100 / H100 SXM)
ARCH_PROPS = {
    "sm_80": dict(major=8, minor=0, smem_per_sm=167936, smem_optin=166912, sms=108),
    "sm_90": dict(major=9, minor=0, smem_per_sm=233472, smem_optin=232448, sms=132),
}
STATIC_SMEM_LIMIT = 48 * 1024
MAX_WARPS_PER_SM = 64
# the flags torch's extension build passes to nvcc (torch.utils.cpp_extension.COMMON_NVCC_FLAGS)
NVCC_DEFINES = ["-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
                       "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__",
                       "--expt-relaxed-constexpr"]

OCC_HELPER = r"""
// reads "major minor smem_per_sm smem_optin threads regs static_smem dyn_smem" lines, prints
// "ctas_per_sm limiting_factors" (cuda_occupancy.h)
#include <cstdio>
#include "cuda_occupancy.h"
int main() {
  int major, minor, threads, regs;
  size_t smem_sm, optin, st, dyn;
  while (std::scanf("%d %d %zu %zu %d %d %zu %zu", &major, &minor, &smem_sm, &optin, &threads, &regs, &st, &dyn) == 8) {
    cudaOccDeviceProp p;
    p.computeMajor = major; p.computeMinor = minor; p.maxThreadsPerBlock = 1024;
    p.maxThreadsPerMultiprocessor = 2048; p.regsPerBlock = 65536; p.regsPerMultiprocessor = 65536;
    p.warpSize = 32; p.sharedMemPerBlock = 48 * 1024; p.sharedMemPerMultiprocessor = smem_sm;
    p.numSms = 1; p.sharedMemPerBlockOptin = optin; p.reservedSharedMemPerBlock = 1024;
    cudaOccFuncAttributes a;
    a.maxThreadsPerBlock = threads; a.numRegs = regs; a.sharedSizeBytes = st;
    a.partitionedGCConfig = PARTITIONED_GC_OFF;
    // dc::launch raises cudaFuncAttributeMaxDynamicSharedMemorySize to what it requests
    a.shmemLimitConfig = FUNC_SHMEM_LIMIT_OPTIN; a.maxDynamicSharedSizeBytes = dyn;
    a.numBlockBarriers = 1;
    cudaOccDeviceState s;
    cudaOccResult r;
    if (cudaOccMaxActiveBlocksPerMultiprocessor(&r, &p, &a, &s, threads, dyn) != CUDA_OCC_SUCCESS)
      std::printf("0 -1\n");
    else
      std::printf("%d %u\n", r.activeBlocksPerMultiprocessor, r.limitingFactors);
  }
  return 0;
}
"""
LIMITING = {1: "warps", 2: "registers", 4: "shared memory", 8: "blocks", 16: "barriers"}


# ---------------------------------------------------------------------------------------------
def find_nvcc() -> Optional[str]:
    for base in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if base and os.path.exists(os.path.join(base, "bin", "nvcc")):
            return os.path.join(base, "bin", "nvcc")
    return shutil.which("nvcc")


def cu_files() -> list:
    return sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))


def nvcc_flags() -> list:
    # NVCC_DEFINES are torch's COMMON_NVCC_FLAGS (a test keeps them equal); not imported from torch
    # so that the report needs no torch import (which also warns without a GPU)
    return ["-std=c++17", "-O3", "-DDILCONV_WITH_CUDA=1", *NVCC_DEFINES, "-I" + os.path.join(ROOT, "csrc")]


def _digest(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else str(p).encode())
    return h.hexdigest()[:16]


def _source_state() -> bytes:
    out = b""
    for pat in ("csrc/kernels/**/*", "csrc/cuda/*.cu", "csrc/cuda/*.cuh", "csrc/cuda/*.h", "csrc/emu/*.h"):
        for p in sorted(glob.glob(os.path.join(ROOT, pat), recursive=True)):
            if os.path.isfile(p):
                with open(p, "rb") as f:
                    out += p.encode() + f.read()
    return out


def annotations(cu_path: str) -> tuple:
    """(default regexes, [(regex, threads, smem)]) from the file's dc: comment lines."""
    defaults, launches = [], []
    with open(cu_path, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = re.match(r"\s*//\s*dc:default\s+(.+?)\s*$", line)
            if m:
                defaults.append(re.compile(m.group(1)))
            m = re.match(r"\s*//\s*dc:launch\s+(\S+)((?:\s+\w+=\d+)*)\s*$", line)
            if m:
                kv = dict(x.split("=") for x in m.group(2).split())
                launches.append((re.compile(m.group(1)), int(kv["threads"]) if "threads" in kv else None,
                                 int(kv.get("smem", 0))))
    return defaults, launches


# ---------------------------------------------------------------------------------------------
def parse_ptxas(log: str, arch: str) -> dict:
    """{mangled kernel: {registers, spill_bytes, stack, smem_static}} from `-Xptxas -v` output."""
    out, cur, cur_props = {}, None, False
    for line in log.splitlines():
        m = re.search(r"Compiling entry function '([^']+)' for '(sm_\d+)'", line)
        if m:
            cur = m.group(1) if m.group(2) == arch else None
            if cur:
                out[cur] = dict(registers=0, spill_bytes=0, stack=0, smem_static=0)
            continue
        m = re.search(r"Function properties for (\S+)", line)
        if m:
            props_for = m.group(1)
            cur_props = props_for == cur
            continue
        if cur is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and cur_props:
            out[cur]["stack"] = int(m.group(1))
            out[cur]["spill_bytes"] = int(m.group(2)) + int(m.group(3))
            continue
        m = re.search(r"Used (\d+) registers", line)
        if m:
            out[cur]["registers"] = int(m.group(1))
            s = re.search(r"(\d+) bytes smem", line)
            out[cur]["smem_static"] = int(s.group(1)) if s else 0
            cur = None
    return out


def parse_ptx(ptx: str) -> dict:
    """{mangled kernel: (threads per block from `.maxntid` or None, uses dynamic shared memory)}
    from PTX entries (DC_DYNAMIC_SHARED's array is `dc_dynamic_smem_`)."""
    out = {}
    for chunk in ptx.split(".entry ")[1:]:
        name = chunk.split("(", 1)[0].strip()
        head, _, body = chunk.partition("{")
        m = re.search(r"\.maxntid\s+(\d+)\s*,\s*(\d+)\s*,\s*(\d+)", head)
        threads = int(m.group(1)) * int(m.group(2)) * int(m.group(3)) if m else None
        body = body.split("\n.entry ", 1)[0]
        out[name] = (threads, "dc_dynamic_smem_" in body)
    return out


def demangle(names: list) -> dict:
    tool = shutil.which("c++filt")
    if not tool or not names:
        return {n: n for n in names}
    r = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True)
    lines = r.stdout.splitlines()
    return dict(zip(names, lines)) if r.returncode == 0 and len(lines) == len(names) else {n: n for n in names}


def split_name(demangled: str) -> tuple:
    """'void ns::k<float, 3>(P)' -> ('ns::k', '<float, 3>')."""
    s = demangled[5:] if demangled.startswith("void ") else demangled
    i = 0
    while i < len(s) and s[i] not in "<(":
        i += 1
    name, rest = s[:i], s[i:]
    config = ""
    if rest.startswith("<"):
        depth = 0
        for j, ch in enumerate(rest):
            depth += ch == "<"
            depth -= ch == ">"
            if depth == 0:
                config = rest[: j + 1]
                break
    return name, config


def compile_cu(nvcc: str, cu: str, arch: str, use_cache: bool) -> list:
    """Raw rows (no occupancy) of one .cu for one arch."""
    flags = nvcc_flags()
    version = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    key = _digest(version, " ".join(flags), arch, _source_state())
    stem = os.path.splitext(os.path.basename(cu))[0]
    cache = os.path.join(CACHE_DIR, f"{stem}-{arch}-{key}.json")
    if use_cache and os.path.exists(cache):
        with open(cache) as f:
            return json.load(f)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [nvcc, *flags, f"--gpu-architecture={arch}", "-cubin", "-Xptxas", "-v", "--keep",
               "--keep-dir", tmp, "-o", os.path.join(tmp, stem + ".cubin"), cu]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"nvcc failed for {os.path.relpath(cu, ROOT)} ({arch}):\n{r.stderr[-6000:]}")
        ptx = ""
        for p in glob.glob(os.path.join(tmp, "*.ptx")):
            with open(p) as f:
                ptx += f.read()
    res = parse_ptxas(r.stdout + r.stderr, arch)
    ptx_info = parse_ptx(ptx)
    names = demangle(sorted(res))
    rows = []
    for mangled, props in sorted(res.items()):
        kernel, config = split_name(names[mangled])
        rows.append(dict(backend="cuda", file=os.path.relpath(cu, ROOT), kernel=kernel, config=config,
                         demangled=names[mangled], mangled=mangled, arch=arch,
                         maxntid=ptx_info.get(mangled, (None, False))[0],
                         uses_dynamic_smem=ptx_info.get(mangled, (None, False))[1],
                         **props))
    os.makedirs(CACHE_DIR, exist_ok=True)
    with open(cache, "w") as f:
        json.dump(rows, f)
    return rows


def occupancy_helper() -> Optional[str]:
    header = None
    nvcc = find_nvcc()
    if nvcc:
        cand = os.path.join(os.path.dirname(os.path.dirname(nvcc)), "include", "cuda_occupancy.h")
        header = cand if os.path.exists(cand) else None
    cxx = shutil.which(os.environ.get("CXX", "g++"))
    if not header or not cxx:
        return None
    with open(header, "rb") as f:
        exe = os.path.join(CACHE_DIR, f"occupancy-{_digest(OCC_HELPER, f.read())}")
    if not os.path.exists(exe):
        os.makedirs(CACHE_DIR, exist_ok=True)
        src = exe + ".cpp"
        with open(src, "w") as f:
            f.write(OCC_HELPER)
        tmp = f"{exe}.{os.getpid()}.tmp"
        subprocess.run([cxx, "-O1", "-I", os.path.dirname(header), src, "-o", tmp], check=True,
                       capture_output=True)
        os.replace(tmp, exe)
    return exe


def add_occupancy(rows: list) -> None:
    todo = [r for r in rows if r.get("threads_per_block")]
    exe = occupancy_helper() if todo else None
    for r in rows:
        r.setdefault("ctas_per_sm", None)
        r.setdefault("occupancy", None)
        r.setdefault("limited_by", None)
    if not exe:
        return
    lines = []
    for r in todo:
        a = ARCH_PROPS[r["arch"]]
        lines.append(f"{a['major']} {a['minor']} {a['smem_per_sm']} {a['smem_optin']} {r['threads_per_block']} "
                     f"{r['registers']} {r['smem_static']} {r['smem_dynamic'] or 0}")
    out = subprocess.run([exe], input="\n".join(lines) + "\n", capture_output=True, text=True, check=True).stdout.split("\n")
    for r, line in zip(todo, out):
        ctas, lim = (int(x) for x in line.split())
        r["ctas_per_sm"] = ctas
        warps = -(-r["threads_per_block"] // 32)
        r["occupancy"] = round(min(1.0, ctas * warps / MAX_WARPS_PER_SM), 4)
        r["limited_by"] = ", ".join(v for k, v in LIMITING.items() if lim > 0 and lim & k) or None


def cuda_rows(archs=ARCHS, files=None, use_cache=True, jobs=None) -> list:
    nvcc = find_nvcc()
    if nvcc is None:
        raise RuntimeError("nvcc not found (set CUDA_HOME); the CUDA resource report needs the CUDA toolkit")
    cus = files or cu_files()
    jobs = jobs or max(1, int(os.environ.get("MAX_JOBS", "2")))
    with concurrent.futures.ThreadPoolExecutor(jobs) as ex:
        futs = [(cu, ex.submit(compile_cu, nvcc, cu, arch, use_cache)) for cu in cus for arch in archs]
        raw = [(cu, f.result()) for cu, f in futs]
    rows = []
    for cu, rs in raw:
        defaults, launches = annotations(cu)
        for r in rs:
            threads, smem, declared = r.pop("maxntid"), 0, False
            for rx, t, s in launches:
                if rx.search(r["demangled"]):
                    threads = t or threads
                    smem = max(smem, s)
                    declared = True
            r["threads_per_block"] = threads
            # None: the kernel uses dynamic shared memory but no dc:launch line says how much
            # (occupancy is then computed without it: an upper bound)
            r["smem_dynamic"] = smem if declared or not r["uses_dynamic_smem"] else None
            r["default_path"] = (not defaults) or any(rx.search(r["demangled"]) for rx in defaults)
            rows.append(r)
    add_occupancy(rows)
    rows.sort(key=lambda r: (r["file"], r["kernel"], r["config"], r["arch"]))
    return rows


def triton_rows() -> tuple:
    """(rows, note) from dilconv.triton.aot.report() when that module exists."""
    try:
        from dilconv.triton import aot  # type: ignore
    except ImportError:
        return [], None
    try:
        rows = list(aot.report())
    except Exception as e:  # noqa: BLE001 - the report still shows the CUDA rows
        return [], f"dilconv.triton.aot.report() failed: {e}"
    for r in rows:
        r.setdefault("backend", "triton")
    return rows, None


def problems(rows: list) -> list:
    out = []
    for r in rows:
        where = f"{r.get('backend')} {r.get('kernel')}{r.get('config') or ''} [{r.get('arch')}]"
        if r.get("default_path") and (r.get("spill_bytes") or 0) > 0:
            out.append(f"{where}: {r['spill_bytes']} bytes of register spills in a default-path kernel")
        st, dyn = r.get("smem_static") or 0, r.get("smem_dynamic") or 0
        if st > STATIC_SMEM_LIMIT:
            out.append(f"{where}: {st} bytes of static shared memory (limit {STATIC_SMEM_LIMIT})")
        limit = ARCH_PROPS.get(r.get("arch"), {}).get("smem_optin")
        if limit and st + dyn > limit:
            out.append(f"{where}: {st + dyn} bytes of shared memory per block (limit {limit} on {r['arch']})")
        if r.get("ctas_per_sm") == 0:
            out.append(f"{where}: cannot be resident on an SM (0 CTAs per SM)")
    return out


def format_table(rows: list) -> str:
    cols = [("backend", 7), ("arch", 5), ("kernel", 0), ("config", 0), ("registers", 4), ("spill_bytes", 5),
            ("smem_static", 6), ("smem_dynamic", 6), ("threads_per_block", 4), ("ctas_per_sm", 4),
            ("occupancy", 5), ("default_path", 5)]
    heads = {"registers": "regs", "spill_bytes": "spill", "smem_static": "smem", "smem_dynamic": "dynsm",
             "threads_per_block": "thr", "ctas_per_sm": "ctas", "occupancy": "occ", "default_path": "dflt"}

    def cell(r, k):
        v = r.get(k)
        if v is None:
            return "-"
        if k == "occupancy":
            return f"{v:.2f}"
        if isinstance(v, bool):
            return "yes" if v else "no"
        return str(v)

    table = [[heads.get(k, k) for k, _ in cols]] + [[cell(r, k) for k, _ in cols] for r in rows]
    widths = [max(len(t[i]) for t in table) for i in range(len(cols))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(t, widths)).rstrip() for t in table)


# ---------------------------------------------------------------------------------------------
def add_arguments(p) -> None:
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.add_argument("--check", action="store_true",
                   help="exit 1 on spills in default-path kernels or shared memory beyond the arch limits")
    p.add_argument("--arch", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    p.add_argument("--no-cache", action="store_true", help="recompile even if the cached result is current")
    p.add_argument("--no-triton", action="store_true", help="leave out the Triton backend's rows")


def main(args) -> int:
    notes = []
    try:
        rows = cuda_rows(tuple(args.arch), use_cache=not args.no_cache)
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not cu_files():
        notes.append("no csrc/cuda/*.cu files in this checkout")
    if not args.no_triton:
        trows, note = triton_rows()
        rows += trows
        if note:
            notes.append(note)
    probs = problems(rows)
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print(format_table(rows))
        print(f"\n{len(rows)} kernel instantiation(s) x arch; static figures from ptxas/cuda_occupancy.h "
              "(A100/H100 SM limits), no GPU run.")
        undeclared = sorted({r["kernel"] for r in rows if r.get("backend") == "cuda" and r.get("smem_dynamic") is None})
        if undeclared:
            notes.append("dynamic shared memory used but not declared with a `// dc:launch <regex> smem=BYTES` line "
                         "(occupancy shown is an upper bound) for: " + ", ".join(undeclared))
        unknown = sorted({r["kernel"] for r in rows if r.get("threads_per_block") is None})
        if unknown:
            notes.append("threads per block unknown (no __launch_bounds__ or dc:launch line), occupancy not "
                         "computed for: " + ", ".join(unknown))
    for n in notes:
        print(f"note: {n}", file=sys.stderr)
    for pr in probs:
        print(f"PROBLEM: {pr}", file=sys.stderr)
    if args.check and probs:
        return 1
    return 0
