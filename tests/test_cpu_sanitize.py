"""CPU kernels of csrc/cpu/kernels.cpp (torch-free: the planar depthwise backward, the
channels-last depthwise forward and weight gradient, the 1x1 convolutions' small GEMM) under
AddressSanitizer and UBSan, each instruction-set variant this CPU runs: every buffer and the
scratch allocated at exactly the size the kernels ask for, results against a naive float64
reference (tests/sanitize_cpu/cpu_kernels.cpp). A deliberately short output buffer proves that an
out-of-bounds write is caught."""
import os
import subprocess

import pytest

import emu_build

pytestmark = pytest.mark.skipif(emu_build.cxx() is None, reason="needs g++")

FLAGS = ["-O1", "-g1", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
         "-fno-sanitize-recover=all"]
ENV = {"ASAN_OPTIONS": "detect_leaks=1:halt_on_error=1", "UBSAN_OPTIONS": "print_stacktrace=1"}
REPORT_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:")

_exe = []


def harness():
    if not _exe:
        _exe.append(emu_build.build("sanitize-cpu", ["csrc/cpu/kernels.cpp",
                                                     "tests/sanitize_cpu/cpu_kernels.cpp"],
                                    FLAGS, link_flags=FLAGS))
    return _exe[0]


def run(isa, *args):
    env = dict(os.environ, **ENV)
    env.pop("DILCONV_CPU_ISA", None)
    if isa:
        env["DILCONV_CPU_ISA"] = isa
    return subprocess.run([harness(), *args], capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.parametrize("isa", ["", "avx2", "base"])
def test_kernels_clean_and_exact(isa):
    r = run(isa)
    out = r.stdout + r.stderr
    assert not any(m in out for m in REPORT_MARKERS), out[-20000:]
    assert r.returncode == 0 and ": bad 0" in r.stdout, out[-20000:]


def test_short_buffer_is_caught():
    r = run("", "--broken")
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "AddressSanitizer: heap-buffer-overflow" in out, out[-5000:]
