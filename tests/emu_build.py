"""Builds host programs from the emulated CUDA kernel sources with g++ (no torch), cached.

Used by tests/test_emulation.py and tests/test_sanitizers.py. A program is rebuilt only when its
compiler flags or any source/header it may include changes (the key hashes every file under
csrc/kernels, csrc/emu, tests/emu and tests/sanitize plus the given sources). Objects are compiled
in parallel (MAX_JOBS, default 2) and cached per source in build/emu-tests/.
"""
from __future__ import annotations

import concurrent.futures
import glob
import hashlib
import os
import shutil
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD_DIR = os.path.join(ROOT, "build", "emu-tests")
HEADER_GLOBS = ("csrc/kernels/*", "csrc/emu/*.h", "csrc/cpu/*.h", "tests/emu/*.h", "tests/sanitize/*.h")
BASE_FLAGS = ["-std=c++20", "-pthread", "-I" + os.path.join(ROOT, "csrc"), "-I" + os.path.join(ROOT, "tests")]


def cxx() -> str | None:
    return shutil.which(os.environ.get("CXX", "g++"))


def _digest(paths, flags) -> str:
    h = hashlib.sha256(" ".join(flags).encode())
    for p in sorted(set(paths)):
        h.update(p.encode())
        with open(p, "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:16]


def _headers():
    out = []
    for g in HEADER_GLOBS:
        out += glob.glob(os.path.join(ROOT, g))
    return [p for p in out if os.path.isfile(p)]


def _run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"build failed: {' '.join(cmd)}\n{r.stdout}\n{r.stderr}")


def build(name: str, sources, flags, link_flags=()) -> str:
    """Compile `sources` (paths relative to the repo root or absolute) into a program; returns
    its path."""
    compiler = cxx()
    if compiler is None:
        raise RuntimeError("no C++ compiler (g++) found")
    flags = BASE_FLAGS + list(flags)
    sources = [os.path.join(ROOT, s) for s in sources]
    headers = _headers()
    os.makedirs(BUILD_DIR, exist_ok=True)
    exe = os.path.join(BUILD_DIR, f"{name}-{_digest(sources + headers, flags + list(link_flags))}")
    if os.path.exists(exe):
        return exe

    def obj(src):
        rel = os.path.relpath(src, ROOT).replace(os.sep, "_")
        o = os.path.join(BUILD_DIR, f"{rel}-{_digest([src] + headers, flags)}.o")
        if not os.path.exists(o):
            tmp = f"{o}.{os.getpid()}.tmp"
            _run([compiler, *flags, "-c", src, "-o", tmp])
            os.replace(tmp, o)
        return o

    jobs = max(1, int(os.environ.get("MAX_JOBS", "2")))
    with concurrent.futures.ThreadPoolExecutor(jobs) as ex:
        objs = list(ex.map(obj, sources))
    tmp = f"{exe}.{os.getpid()}.tmp"
    _run([compiler, *flags, *objs, "-o", tmp, *link_flags])
    os.replace(tmp, exe)
    _prune(name, keep=exe)
    return exe


def _prune(name, keep):
    """Drop older builds of program `name` (objects are left: other programs share them)."""
    for p in glob.glob(os.path.join(BUILD_DIR, f"{name}-*")):
        if p != keep and len(os.path.basename(p)) == len(os.path.basename(keep)):
            try:
                os.remove(p)
            except OSError:
                pass


def emu_family_sources():
    """csrc/emu/*.cpp files that do not include torch headers: the emulated kernel
    instantiations (and the runtime's C ABI), buildable without torch."""
    out = []
    for p in sorted(glob.glob(os.path.join(ROOT, "csrc", "emu", "*.cpp"))):
        with open(p, encoding="utf-8", errors="replace") as f:
            text = f.read()
        if any(s in text for s in ("<torch/", "<ATen/", "<c10/", '"torch/', '"ATen/', '"c10/')):
            continue
        out.append(os.path.relpath(p, ROOT))
    return out
