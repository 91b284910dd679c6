"""Wheels for deployment: built, installed where no compiler exists, and smoke-tested there.

The wheel builds compile the whole extension again (minutes), so they run when
DILCONV_WHEEL_TESTS=1 (CI sets it); the version-compatibility checks always run.
"""
import glob
import os
import shutil
import subprocess
import sys
import types
import zipfile

import pytest
import torch

from dilconv import _ext

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WHEELS = os.environ.get("DILCONV_WHEEL_TESTS") == "1"
needs_wheels = pytest.mark.skipif(not WHEELS, reason="wheel builds run when DILCONV_WHEEL_TESTS=1 (CI)")


# ------------------------------------------------------------------------------------------------
# an extension built for another torch fails with a clear message, not an undefined symbol


def _info(torch_version, cuda=None):
    return types.SimpleNamespace(torch_version=torch_version, cuda_version=cuda, with_cuda=cuda is not None,
                                 cuda_arch_list="8.0" if cuda else "")


def test_compatible_build_passes():
    _ext.check_compatible(_info("2.14.1+cu130", "13.0"), "2.14.0+cu130", "13.0")
    _ext.check_compatible(_info("2.14.1"), "2.14.1+cu130", "13.0")  # CPU build under CUDA torch


@pytest.mark.parametrize("runtime", ["2.13.0", "2.15.0", "3.0.0"])
def test_other_torch_minor_is_refused(runtime):
    with pytest.raises(ImportError, match=r"built against torch 2\.14\.1.*only works with torch 2\.14\.x"):
        _ext.check_compatible(_info("2.14.1+cu130", "13.0"), runtime, "13.0")


def test_cuda_build_under_cpu_torch_is_refused():
    with pytest.raises(ImportError, match="CPU-only build"):
        _ext.check_compatible(_info("2.14.1+cu130", "13.0"), "2.14.1+cpu", None)


@pytest.mark.skipif(not _ext.loaded or _ext.build_info is None, reason="needs the built extension")
def test_import_under_incompatible_torch_fails_clearly():
    code = "import torch; torch.__version__ = '2.13.0'; import dilconv"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode != 0
    assert "ImportError" in r.stderr and "only works with torch 2.14.x" in r.stderr


# ------------------------------------------------------------------------------------------------
# wheels


def _copy_sources(dst):
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout.split()
    for f in files:
        if f.startswith((".ci/", "benchmarks/results/")):
            continue
        os.makedirs(os.path.dirname(os.path.join(dst, f)) or dst, exist_ok=True)
        shutil.copy2(os.path.join(ROOT, f), os.path.join(dst, f))


def _build_wheel(tmp_path, env_extra):
    src = tmp_path / "src"
    _copy_sources(str(src))
    env = dict(os.environ, **env_extra)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-q",
                    "-w", str(tmp_path / "dist"), str(src)], check=True, env=env)
    (whl,) = glob.glob(str(tmp_path / "dist" / "dilconv-*.whl"))
    return whl


SMOKE = r"""
import shutil, subprocess, sys
assert shutil.which("gcc") is None and shutil.which("c++") is None and shutil.which("nvcc") is None
import torch, dilconv
import torch.nn.functional as F
from dilconv import functional as DF
assert "site-packages" in dilconv.__file__, dilconv.__file__
assert "cpu" in dilconv.backends(), dilconv.backends()
print(subprocess.run([sys.executable, "-m", "dilconv", "info"], check=True, capture_output=True, text=True).stdout)
torch.manual_seed(0)
x = torch.randn(2, 8, 13, 12, dtype=torch.float64)
def close(a, b):
    assert (a - b).abs().max() <= 1e-10 * b.abs().max(), (a - b).abs().max()
w = torch.randn(6, 4, 3, 3, dtype=torch.float64)
close(DF.conv2d(x, w, None, 1, 2, 2, 2, backend="cpu"), F.conv2d(x, w, None, 1, 2, 2, 2))
wt = torch.randn(8, 3, 4, 4, dtype=torch.float64)
close(DF.conv_transpose2d(x, wt, None, 2, 1, backend="cpu"), F.conv_transpose2d(x, wt, None, 2, 1))
dw, pw = torch.randn(8, 1, 3, 3, dtype=torch.float64), torch.randn(5, 8, 1, 1, dtype=torch.float64)
ref = F.conv2d(F.conv2d(x, dw, None, 1, 3, 3, 8), pw)
close(DF.depthwise_separable_conv2d(x, dw, pw, None, None, 1, 3, 3, backend="cpu"), ref)
xg = x.clone().requires_grad_()
DF.conv2d(xg, w, None, 1, 2, 2, 2, backend="cpu").sum().backward()
xr = x.clone().requires_grad_()
F.conv2d(xr, w, None, 1, 2, 2, 2).sum().backward()
close(xg.grad, xr.grad)
# a small network forward on the "cpu" backend against "torch"
try:
    from dilconv.models import deeplabv3plus
    net = lambda b: deeplabv3plus(backbone="mobilenet_v2", num_classes=3, width_mult=0.25, backend=b)
except ImportError:
    net = None
if net is not None:
    torch.manual_seed(1); a = net("cpu").eval()
    torch.manual_seed(1); b = net("torch").eval()
    img = torch.randn(1, 3, 65, 65)
    with torch.no_grad():
        ya, yb = a(img)["out"], b(img)["out"]
    assert ya.shape == (1, 3, 65, 65)
    assert (ya - yb).abs().max() <= 1e-4 * yb.abs().max()
print("SMOKE OK")
"""


@needs_wheels
def test_cpu_wheel_installs_and_runs_without_a_compiler(tmp_path):
    whl = _build_wheel(tmp_path, {"DILCONV_CUDA": "0"})
    name = os.path.basename(whl)
    tm = ".".join(torch.__version__.split("+")[0].split(".")[:2])
    assert f"+torch{tm}cpu" in name, name
    with zipfile.ZipFile(whl) as z:
        names = z.namelist()
        assert any(n.startswith("dilconv/_C") and n.endswith(".so") for n in names), names
        meta = z.read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert f"Requires-Dist: torch<{tm.split('.')[0]}.{int(tm.split('.')[1]) + 1},>={tm}" in meta, meta
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    # torch comes from the same local wheel files pip used for this environment
    subprocess.run([py, "-m", "pip", "install", "-q", f"torch=={torch.__version__.split('+')[0]}", whl],
                   check=True)
    env = {"PATH": str(venv / "bin"), "HOME": str(tmp_path), "CC": "/nonexistent", "CXX": "/nonexistent"}
    r = subprocess.run([py, "-c", SMOKE], capture_output=True, text=True, env=env, cwd=str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SMOKE OK" in r.stdout and "CUDA sources compiled: no" in r.stdout


def _cuobjdump():
    import triton

    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    return path if os.path.exists(path) else shutil.which("cuobjdump")


@needs_wheels
@pytest.mark.skipif(torch.version.cuda is None, reason="needs a CUDA build of torch")
def test_cuda_wheel_contains_cubins_for_requested_archs(tmp_path):
    whl = _build_wheel(tmp_path, {"FORCE_CUDA": "1", "TORCH_CUDA_ARCH_LIST": "8.0"})
    assert "cu" + torch.version.cuda.replace(".", "") in os.path.basename(whl)
    with zipfile.ZipFile(whl) as z:
        so = next(n for n in z.namelist() if n.startswith("dilconv/_C") and n.endswith(".so"))
        z.extract(so, tmp_path)
        info = z.read("dilconv/_build_info.py").decode()
    assert "with_cuda = True" in info and "cuda_arch_list = '8.0'" in info
    tool = _cuobjdump()
    assert tool, "cuobjdump not found (it ships in the triton wheel)"
    out = subprocess.run([tool, "--list-elf", str(tmp_path / so)], capture_output=True, text=True,
                         check=True).stdout
    archs = {line.split(".")[-2] for line in out.splitlines() if ".sm_" in line}
    assert archs == {"sm_80"}, out
