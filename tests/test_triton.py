"""The Triton backend in CI without a GPU.

* tests/test_triton_kernels.py runs in a subprocess with TRITON_INTERPRET=1 (the variable must be
  set before triton is imported, and this process may already have imported triton normally).
  With a GPU, or when this process itself runs the interpreter, pytest collects that module
  directly and the subprocess is skipped.
* Ahead-of-time compilation of every kernel and autotune config for sm_80 and sm_90: everything
  compiles, no spills in the default configs, shared memory within each arch's per-CTA limit.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

triton = pytest.importorskip("triton")


@pytest.mark.skipif(INTERPRET or torch.cuda.is_available(),
                    reason="test_triton_kernels.py is collected directly in this process")
def test_kernels_under_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
         str(ROOT / "tests" / "test_triton_kernels.py")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout and " failed" not in proc.stdout


def test_backend_availability_follows_environment():
    """Without a GPU "triton" is usable only under the interpreter, and says why not otherwise."""
    code = ("import dilconv; from dilconv import registry; b = registry.get_backend('triton'); "
            "print(repr(b.available())); print('triton' in dilconv.backends())")
    for interp in ("0", "1"):
        env = dict(os.environ, TRITON_INTERPRET=interp, PYTHONPATH=str(ROOT))
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                             text=True, check=True).stdout.split("\n")
        if interp == "1" or torch.cuda.is_available():
            assert out[:2] == ["None", "True"], out
        else:
            assert "no CUDA device" in out[0] and out[1] == "False", out


_TRACE_GPU_PATH = r"""
import logging, torch
logging.getLogger("torch._higher_order_ops.triton_kernel_wrap").setLevel(logging.ERROR)
import dilconv.triton
from torch._subclasses.fake_tensor import FakeTensorMode
from torch._functorch.aot_autograd import aot_function
T = torch.ops.dilconv
graphs = []
def f(x, w, dw, pw, gy):
    y = T.conv2d_triton(x, w, None, [1, 1], [2, 2], [2, 2], 2)
    z = T.separable_conv2d_triton(y, dw, None, pw, None, [1, 1], [1, 1], [1, 1], True, False)
    t = T.conv_transpose2d_triton(z, w[:6], None, [2, 2], [1, 1], [1, 1], 2, [1, 1])
    gi = T.conv2d_input_grad_triton(gy, w, [2, 8, 9, 9], [1, 1], [2, 2], [2, 2], 2)
    gw = T.conv2d_weight_grad_triton(gy, x, [8, 4, 3, 3], [1, 1], [2, 2], [2, 2], 2)
    gs = T.separable_conv2d_backward_triton(z, y, dw, None, pw, None, [1, 1], [1, 1], [1, 1], True, True)
    return t, gi, gw, gs
with FakeTensorMode():
    x = torch.empty(2, 8, 9, 9, device="cuda").to(memory_format=torch.channels_last)
    args = (x, torch.empty(8, 4, 3, 3, device="cuda"), torch.empty(8, 1, 3, 3, device="cuda"),
            torch.empty(6, 8, 1, 1, device="cuda"), torch.empty(2, 8, 9, 9, device="cuda"))
    out = aot_function(f, fw_compiler=lambda gm, _: graphs.append(gm.code) or gm)(*args)
    assert out[0].shape == (2, 8, 18, 18) and out[0].stride(1) == 1, out[0].stride()
code = graphs[0]
print(code.count("torch.ops.higher_order.triton_kernel_wrapper_functional("), code.count("torch.ops.dilconv."))
"""


def test_gpu_path_traces_to_triton_kernels():
    """Without the interpreter the ops are triton_ops: AOTAutograd (torch.compile's front end)
    decomposes them into the Triton kernel calls themselves. Traced on fake CUDA tensors, so
    no GPU is needed."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, "-c", _TRACE_GPU_PATH], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    kernels, opaque = map(int, out.stdout.split())
    # fprop, sep fwd, transposed, dgrad, wgrad, and the five kernels of the separable backward
    assert kernels == 10 and opaque == 0, out.stdout


@pytest.fixture(scope="module")
def aot_rows():
    from dilconv.triton import aot

    return aot.report()


def test_aot_every_kernel_and_config_compiles(aot_rows):
    from dilconv.triton import aot

    expected = {(j["kernel"], j["config_name"], j["arch"]) for j in aot.jobs()}
    got = {(r["kernel"], r["config"], r["arch"]) for r in aot_rows}
    assert got == expected
    kernels = {r["kernel"] for r in aot_rows}
    assert kernels >= {"conv2d_fprop", "conv2d_dgrad", "conv2d_wgrad", "dw_fprop", "dw_dgrad",
                       "dw_wgrad", "sep_fprop", "sep_pw_wgrad", "sep_mid_grad", "conv_transpose2d"}
    for kernel in kernels:
        for arch in ("sm_80", "sm_90"):
            assert any(r["default_path"] for r in aot_rows if r["kernel"] == kernel and r["arch"] == arch)
    for r in aot_rows:
        assert set(r) == {"backend", "kernel", "config", "arch", "registers", "spill_bytes",
                          "smem_static", "smem_dynamic", "threads_per_block", "ctas_per_sm",
                          "occupancy", "default_path"}
        assert r["backend"] == "triton" and 0 < r["registers"] <= 255
        assert 0 < r["ctas_per_sm"] and 0 < r["occupancy"] <= 1


def test_aot_resources_within_limits(aot_rows):
    """No spills in default configs; shared memory within 163 KiB (sm_80) / 227 KiB (sm_90)."""
    from dilconv.triton import aot

    assert aot.smem_limit("sm_80") == 163 * 1024 and aot.smem_limit("sm_90") == 227 * 1024
    assert aot.check(aot_rows) == []


def test_occupancy_model():
    from dilconv.triton import aot

    # 128 threads, 64 registers: 8192 registers per CTA -> 8 CTAs by registers, 16 by threads
    assert aot.occupancy("sm_90", 64, 0, 128) == (8, 0.5)
    # shared memory bound: 100 KiB + 1 KiB reserve per CTA -> 1 CTA on sm_80, 2 on sm_90
    assert aot.occupancy("sm_80", 32, 100 * 1024, 128)[0] == 1
    assert aot.occupancy("sm_90", 32, 100 * 1024, 128)[0] == 2
    # 255 registers: 8160 per warp rounded to 8192 -> 8 warps per SM
    assert aot.occupancy("sm_80", 255, 0, 256) == (1, 0.125)
