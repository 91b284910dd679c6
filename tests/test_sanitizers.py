"""The emulated CUDA kernels under AddressSanitizer (+UBSan bounds) and ThreadSanitizer.

One host program (tests/sanitize/main.cpp) links every torch-free csrc/emu/*.cpp (the kernel
families' emulated instantiations) with the cases in tests/sanitize/case_*.cpp (tiny problems vs
naive references; see tests/sanitize/harness.h for how to add a family). It is built twice:
  asan: -fsanitize=address,undefined -fno-sanitize-recover=all (out-of-bounds global, dynamic
        and static shared memory, use-after-free, UB)
  tsan: -fsanitize=thread (races between the CUDA threads of a block: a missing __syncthreads)
Any report fails. Deliberately broken kernels prove each sanitizer catches its class of bug.
"""
import os
import subprocess

import pytest

import emu_build

pytestmark = pytest.mark.skipif(emu_build.cxx() is None, reason="needs g++")

# -O0: half the compile time of -O1 (the builds dominate; the cases are tiny) and exact reports
COMMON = ["-O0", "-g1", "-fno-omit-frame-pointer"]
SANITIZERS = {
    "asan": COMMON + ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-D_GLIBCXX_SANITIZE_VECTOR=1"],
    "tsan": COMMON + ["-fsanitize=thread"],
}
ENV = {
    "ASAN_OPTIONS": "detect_leaks=1:halt_on_error=1:abort_on_error=0",
    "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
    "TSAN_OPTIONS": "halt_on_error=0:exitcode=66:second_deadlock_stack=1",
}
REPORT_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:", "WARNING: ThreadSanitizer")


def sources():
    tests = sorted(os.path.relpath(p, emu_build.ROOT) for p in
                   __import__("glob").glob(os.path.join(emu_build.ROOT, "tests", "sanitize", "*.cpp")))
    return emu_build.emu_family_sources() + tests


_built = {}


def harness(name):
    if name not in _built:
        flags = SANITIZERS[name]
        _built[name] = emu_build.build(f"sanitize-{name}", sources(), flags, link_flags=flags)
    return _built[name]


def run(exe, *args, timeout=180):
    env = dict(os.environ, **ENV)
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.parametrize("name", sorted(SANITIZERS))
def test_matrix_is_clean(name):
    exe = harness(name)
    listed = run(exe, "--list").stdout.split()
    assert "emu_matmul_tiled" in listed
    r = run(exe)
    out = r.stdout + r.stderr
    assert not any(m in out for m in REPORT_MARKERS), f"{name} report:\n{out[-20000:]}"
    assert r.returncode == 0, f"{name}: exit {r.returncode}\n{out[-20000:]}"
    assert f"{len(listed)} case(s), 0 failed" in r.stdout


BROKEN = {
    # (sanitizer, deliberately broken case) -> text its report must contain
    ("asan", "oob_global"): "AddressSanitizer: heap-buffer-overflow",
    ("asan", "oob_dynamic_shared"): "AddressSanitizer: heap-buffer-overflow",
    ("asan", "oob_static_shared"): "runtime error: index 32 out of bounds",
    ("tsan", "missing_barrier"): "ThreadSanitizer: data race",
}


@pytest.mark.parametrize("name,case", sorted(BROKEN))
def test_broken_kernel_is_caught(name, case):
    r = run(harness(name), "--broken", case)
    out = r.stdout + r.stderr
    assert r.returncode != 0, f"{name} did not fail on {case}:\n{out[-5000:]}"
    assert BROKEN[name, case] in out, f"{name} on {case}:\n{out[-5000:]}"
