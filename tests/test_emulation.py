"""Unit tests of the CUDA execution-model emulation (csrc/emu/emulation.h via
csrc/kernels/platform.cuh): test kernels in tests/emu/emu_unit.cpp, built with g++ and run one
subcommand per test (each compares with an independent host reference and prints OK)."""
import json
import subprocess

import numpy as np
import pytest
import torch

import emu_build

pytestmark = pytest.mark.skipif(emu_build.cxx() is None, reason="needs g++")

KERNEL_TESTS = {
    "matmul": "16x16 shared-memory tiled matmul vs a float64 host reference",
    "block_sum": "grid-stride sums, shfl_down/shfl_xor reductions, dynamic smem across warps",
    "shfl": "__shfl/_up/_down/_xor_sync for every lane (incl. >= 16), delta and width 1..32",
    "half_warps": "two half-warps shuffling concurrently with disjoint masks",
    "vote": "ballot/any/all/reduce_add/min/max and __syncthreads_count/and/or",
    "partial_warp": "a 48-thread block: full-mask shuffles over existing lanes; reads beyond are NaN",
    "barrier": "shared-memory reversal that needs __syncthreads",
    "dynamic_smem": "dynamic shared memory exchange; poisoned (NaN) at block start",
    "launch_errors": "misuse fails the launch with a clear error instead of hanging",
    "atomics": "atomicAdd int/float/ull, atomicMax, atomicCAS across threads and blocks",
    "host_threads_and_fork": "launches from 4 host threads at once, and in a forked child (worker pool)",
    "wmma": "dc::wmma m16n16k16 half/bf16 GEMM, all layout pairs, accumulator load/store, misuse",
}


@pytest.fixture(scope="module")
def unit_exe():
    return emu_build.build("emu_unit", ["tests/emu/emu_unit.cpp"], ["-O2"])


def run(exe, *args, timeout=120):
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("name", sorted(KERNEL_TESTS))
def test_kernel(unit_exe, name):
    r = run(unit_exe, name)
    assert r.returncode == 0 and r.stdout.strip().endswith("OK"), r.stdout + r.stderr


def test_half_bfloat16_conversions_match_torch(unit_exe, tmp_path):
    g = torch.Generator().manual_seed(0)
    specials = torch.tensor([0.0, -0.0, 1.0, -1.0, 65504.0, 65519.99, 65520.0, 1e30, -1e30, float("inf"),
                             float("-inf"), float("nan"), -float("nan"), 5.96e-8, 2.98e-8, 2.99e-8, 6.1e-5, 1e-40, 3.4e38], dtype=torch.float32)
    # values on and around half/bf16 rounding boundaries (ties round to even)
    h = torch.arange(0, 65536, dtype=torch.int32).to(torch.int16).view(torch.float16).float()
    h = h[torch.isfinite(h)]
    mid = (h[:-1] + h[1:]) / 2
    b = torch.arange(0, 65536, dtype=torch.int32).to(torch.int16).view(torch.bfloat16).float()
    b = b[torch.isfinite(b)]
    xs = torch.cat([specials, torch.randn(20000, generator=g) * 10, torch.randn(2000, generator=g) * 1e-6,
                    mid, mid.nextafter(torch.tensor(float("inf"))), mid.nextafter(torch.tensor(float("-inf"))),
                    b[::7] * 1.00390625]).float()
    src, dst = tmp_path / "in.bin", tmp_path / "out.bin"
    src.write_bytes(xs.numpy().tobytes())
    r = run(unit_exe, "convert", str(src), str(dst))
    assert r.returncode == 0, r.stdout + r.stderr
    out = dst.read_bytes()
    n = xs.numel()
    half_bits = np.frombuffer(out, np.uint16, n, 0)
    bf16_bits = np.frombuffer(out, np.uint16, n, 2 * n)
    half_vals = np.frombuffer(out, np.float32, 65536, 4 * n)
    bf16_vals = np.frombuffer(out, np.float32, 65536, 4 * n + 4 * 65536)
    # NaN payloads are not specified (torch and the GPU differ): NaN in -> NaN out; the rest bitwise
    nan = torch.isnan(xs).numpy()
    assert nan.sum() == 2
    assert np.isnan(torch.from_numpy(half_bits[nan].view(np.int16)).view(torch.float16).float().numpy()).all()
    assert np.isnan(torch.from_numpy(bf16_bits[nan].view(np.int16)).view(torch.bfloat16).float().numpy()).all()
    np.testing.assert_array_equal(half_bits[~nan], xs.half().view(torch.int16).numpy().view(np.uint16)[~nan])
    np.testing.assert_array_equal(bf16_bits[~nan], xs.bfloat16().view(torch.int16).numpy().view(np.uint16)[~nan])
    all_bits = torch.arange(0, 65536, dtype=torch.int32).to(torch.int16)
    # bitwise, so that NaN payloads and signed zeros are compared too
    np.testing.assert_array_equal(half_vals.view(np.uint32), all_bits.view(torch.float16).float().numpy().view(np.uint32))
    np.testing.assert_array_equal(bf16_vals.view(np.uint32), all_bits.view(torch.bfloat16).float().numpy().view(np.uint32))


def test_traffic_counters(unit_exe):
    """Sector counts per warp request for known access patterns (tests/emu/emu_unit.cpp traffic)."""
    r = run(unit_exe, "traffic")
    assert r.returncode == 0, r.stdout + r.stderr
    rep = json.loads(r.stdout)
    assert rep["enabled"] is False
    launches = rep["launches"]
    assert len(launches) == 7  # the launch after traffic_enable(false) is not recorded
    # predicated_copy: half of each warp loads 64 aligned bytes (2 sectors), the other half records
    # zero-byte accesses at a misaligned address, which add no sector and no bytes
    pred = launches[6]["load"]
    assert (pred["requests"], pred["sectors"], pred["useful_bytes"], pred["bytes"]) == (2, 4, 128, 128), pred
    # (requests, sectors, useful_bytes, bytes) of the loads; 2 blocks x 2 warps of float loads
    expected = [
        (4, 16, 512, 512),    # coalesced: 4 sectors per 128-byte request
        (4, 128, 512, 512),   # stride 8 floats: one sector per lane
        (4, 20, 512, 512),    # misaligned by 4 bytes: 5 sectors
        (4, 4, 16, 512),      # broadcast: 1 sector, 4 distinct bytes per request
        (4, 32, 512, 512),    # every other float: 8 sectors
        (1, 16, 512, 512),    # one warp of float4: 512 contiguous bytes
    ]
    for l, e in zip(launches, expected):
        got = l["load"]
        assert (got["requests"], got["sectors"], got["useful_bytes"], got["bytes"]) == e, (l, e)
        assert l["store"]["sectors"] * 32 == l["store"]["useful_bytes"]  # coalesced, aligned stores
        assert any("strided_copy" in f for f in l["functions"])
    loads = [s for s in rep["sites"] if s["kind"] == "load"]
    assert {s["location"].rsplit(":", 2)[0].replace("\\", "/").split("tests/")[-1] for s in loads} == {"emu/test_kernels.h"}
    float_site = next(s for s in loads if "T = float]" in s["function"])
    assert float_site["requests"] == 20 and float_site["sectors"] == 16 + 128 + 20 + 4 + 32


def test_traffic_python_api():
    """dilconv.emu_traffic reads the counters of the built dilconv._C through ctypes; with the
    emulated ops present, a depthwise conv records coalesced-enough global traffic."""
    from dilconv import _ext, emu_traffic

    if not _ext.loaded:
        pytest.skip(f"dilconv._C not built: {_ext.load_error}")
    emu_traffic.reset()
    assert emu_traffic.report()["launches"] == []
    if not _ext.has_kernel("conv2d_emu", "CPU"):
        with emu_traffic.counting() as t:
            pass
        assert t.data["launches"] == [] and not emu_traffic.enabled()
        pytest.skip("no emulated conv2d op in this build (the kernel families add it)")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 8, 12, 12, generator=g)
    w = torch.randn(8, 1, 3, 3, generator=g)
    with emu_traffic.counting() as t:
        y = torch.ops.dilconv.conv2d_emu(x, w, None, [1, 1], [1, 1], [1, 1], 8)
    torch.testing.assert_close(y, torch.nn.functional.conv2d(x, w, None, 1, 1, 1, 8), rtol=1e-5, atol=1e-5)
    assert not emu_traffic.enabled()
    assert t.launches(), t.data
    total = t.totals()
    assert total["requests"] > 0 and 0 < t.efficiency() <= 1.0
    # every input and output byte is touched at least once
    assert t.requested_bytes(kind="load") >= x.numel() * 4 and t.requested_bytes(kind="store") >= y.numel() * 4


def test_traffic_summaries(unit_exe):
    """dilconv.emu_traffic.Traffic's filters and ratios on a known report."""
    from dilconv.emu_traffic import Traffic

    r = run(unit_exe, "traffic")
    t = Traffic(json.loads(r.stdout))
    useful, sectors = 512 + 512 + 512 + 16 + 512, 16 + 128 + 20 + 4 + 32
    assert t.efficiency(function="T = float]", kind="load") == pytest.approx(useful / (32 * sectors))
    assert t.efficiency(function="T = float4]", kind="load") == 1.0
    assert t.sector_bytes(function="T = float4]") == 32 * (16 + 16)
    assert t.versus_minimum(512 * 2, function="T = float4]") == 1.0
    assert len(t.launches(function="strided_copy")) == 6 and t.launches(function="nope") == []
    with pytest.raises(ValueError):
        t.efficiency(function="nope")
