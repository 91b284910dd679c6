"""`python -m dilconv kernels` (dilconv/kernels_report.py): the static resource report of the CUDA
kernels and its --check gate (spills on the default path, shared memory beyond the arch limit)."""
import json
import os
import subprocess
import sys

import pytest

from dilconv import kernels_report as kr

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_nvcc = pytest.mark.skipif(kr.find_nvcc() is None, reason="needs the CUDA toolkit (nvcc); CI has it")

PTXAS_LOG = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_ZN7dc_cuda1kIfEEvPf' for 'sm_80'
ptxas info    : Function properties for _ZN7dc_cuda1kIfEEvPf
    8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 4096 bytes smem, 368 bytes cmem[0]
ptxas info    : Function properties for _Z6helperv
    64 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Compiling entry function '_ZN7dc_cuda1kIdEEvPd' for 'sm_80'
ptxas info    : Function properties for _ZN7dc_cuda1kIdEEvPd
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 10 registers, used 0 barriers, 368 bytes cmem[0]
"""


def test_parse_ptxas_and_ptx():
    rows = kr.parse_ptxas(PTXAS_LOG, "sm_80")
    assert rows == {
        "_ZN7dc_cuda1kIfEEvPf": dict(registers=255, spill_bytes=16, stack=8, smem_static=4096),
        "_ZN7dc_cuda1kIdEEvPd": dict(registers=10, spill_bytes=0, stack=0, smem_static=0),
    }
    assert kr.parse_ptxas(PTXAS_LOG, "sm_90") == {}
    ptx = (".extern .shared .align 128 .b8 dc_dynamic_smem_[];\n"
           ".visible .entry _Z1av(\n.param .u64 p\n)\n.maxntid 128, 2, 1\n{\nmov.u64 %rd1, dc_dynamic_smem_;\n}\n"
           ".visible .entry _Z1bv()\n{\n.maxntid 9, 9, 9\n}\n")
    assert kr.parse_ptx(ptx) == {"_Z1av": (256, True), "_Z1bv": (None, False)}
    assert kr.split_name("void dc_cuda::k<float, (int)3>(dc_cuda::P)") == ("dc_cuda::k", "<float, (int)3>")
    assert kr.split_name("dc_cuda::k(float const*)") == ("dc_cuda::k", "")


def test_nvcc_flags_match_the_extension_build():
    from torch.utils.cpp_extension import COMMON_NVCC_FLAGS

    assert kr.NVCC_DEFINES == list(COMMON_NVCC_FLAGS)


def test_problems_rules():
    base = dict(backend="cuda", kernel="k", config="", arch="sm_80", registers=32, spill_bytes=0, smem_static=0,
                smem_dynamic=0, threads_per_block=128, ctas_per_sm=4, occupancy=0.25, default_path=True)
    assert kr.problems([base]) == []
    assert kr.problems([dict(base, spill_bytes=8, default_path=False)]) == []
    assert len(kr.problems([dict(base, spill_bytes=8)])) == 1
    assert len(kr.problems([dict(base, smem_dynamic=170 * 1024)])) == 1
    assert kr.problems([dict(base, arch="sm_90", smem_dynamic=170 * 1024)]) == []
    assert len(kr.problems([dict(base, ctas_per_sm=0)])) == 1


@needs_nvcc
def test_catches_spills_and_smem_over_limit():
    rows = kr.cuda_rows(files=[os.path.join(ROOT, "tests", "kernels_report", "bad.cu")])
    by = {(r["kernel"].split("::")[-1], r["arch"]): r for r in rows}
    assert set(by) == {(k, a) for k in ("spilling_kernel", "rare_spilling_kernel", "fine_kernel",
                                        "undeclared_dyn_kernel") for a in ("sm_80", "sm_90")}
    for a in ("sm_80", "sm_90"):
        assert by["spilling_kernel", a]["spill_bytes"] > 0 and by["spilling_kernel", a]["default_path"]
        assert by["rare_spilling_kernel", a]["spill_bytes"] > 0 and not by["rare_spilling_kernel", a]["default_path"]
        assert by["spilling_kernel", a]["threads_per_block"] == 1024  # from __launch_bounds__
        assert by["fine_kernel", a]["smem_dynamic"] == 204800  # from the dc:launch line
        assert by["fine_kernel", a]["uses_dynamic_smem"] and not by["spilling_kernel", a]["uses_dynamic_smem"]
        assert by["undeclared_dyn_kernel", a]["smem_dynamic"] is None  # used but not declared
        assert by["spilling_kernel", a]["smem_dynamic"] == 0
    # 200 KiB of dynamic smem: over sm_80's per-block limit, fits on sm_90 (one CTA per SM)
    assert by["fine_kernel", "sm_80"]["ctas_per_sm"] == 0
    assert by["fine_kernel", "sm_90"]["ctas_per_sm"] == 1
    probs = kr.problems(rows)
    assert any("spilling_kernel [sm_80]" in p and "spills" in p and "rare" not in p for p in probs)
    assert not any("rare_spilling_kernel" in p for p in probs)
    assert any("fine_kernel [sm_80]" in p and "shared memory" in p for p in probs)
    assert not any("fine_kernel [sm_90]" in p for p in probs)


@needs_nvcc
def test_repository_kernels_pass_check():
    """The CI gate: every csrc/cuda/*.cu for sm_80 and sm_90, no spill on the default path, shared
    memory within the arch limits."""
    r = subprocess.run([sys.executable, "-m", "dilconv", "kernels", "--check", "--json", "--no-triton"],
                       cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
    rows = json.loads(r.stdout)
    files = {os.path.relpath(p, ROOT) for p in kr.cu_files()}
    for f in files:
        for arch in kr.ARCHS:
            assert any(x["file"] == f and x["arch"] == arch for x in rows), f"no kernels reported for {f} {arch}"
    for x in rows:
        assert set(x) >= {"backend", "kernel", "config", "arch", "registers", "spill_bytes", "smem_static",
                          "smem_dynamic", "threads_per_block", "ctas_per_sm", "occupancy", "default_path"}
