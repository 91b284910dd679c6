"""Unit tests of the CUDA execution-model emulation (csrc/emu/emulation.h via
csrc/kernels/platform.cuh): test kernels in tests/emu/emu_unit.cpp, built with g++ and run one
subcommand per test."""
import subprocess

import pytest

import emu_build

pytestmark = pytest.mark.skipif(emu_build.cxx() is None, reason="needs g++")


@pytest.fixture(scope="module")
def unit_exe():
    return emu_build.build("emu_unit", ["tests/emu/emu_unit.cpp"], ["-O2"])


def run(exe, *args, timeout=120):
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("name", ["matmul", "block_sum"])
def test_kernel(unit_exe, name):
    r = run(unit_exe, name)
    assert r.returncode == 0 and r.stdout.strip().endswith("OK"), r.stdout + r.stderr
