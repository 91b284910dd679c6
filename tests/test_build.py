"""The build is what it claims: CI sets DILCONV_REQUIRE_EXT=1 so a missing or partial extension
fails here instead of silently skipping every compiled backend."""
import os
import subprocess
import sys

import pytest

import dilconv
from dilconv import _ext, registry

REQUIRE = os.environ.get("DILCONV_REQUIRE_EXT") == "1"


@pytest.mark.skipif(not REQUIRE, reason="DILCONV_REQUIRE_EXT is not set (CI sets it)")
def test_extension_built_with_all_host_backends():
    assert _ext.loaded, _ext.load_error
    usable = dilconv.backends()
    assert "cpu" in usable and "cuda-emu" in usable, usable
    if os.environ.get("FORCE_CUDA") == "1":
        assert _ext.cuda_compiled(), "FORCE_CUDA=1 but the CUDA kernels were not compiled in"


def test_info_cli_runs():
    out = subprocess.run([sys.executable, "-m", "dilconv", "info"], capture_output=True, text=True,
                         check=True).stdout
    assert "usable backends:" in out and "torch" in out


def test_unusable_backend_error_names_usable_ones():
    unusable = [n for n in registry.NAMES if n not in dilconv.backends()]
    if not unusable:
        pytest.skip("every backend is usable here")
    with pytest.raises(RuntimeError, match="Usable backends: torch"):
        dilconv.use_backend(unusable[0])


def test_unknown_backend_is_a_value_error():
    with pytest.raises(ValueError, match="unknown dilconv backend"):
        dilconv.use_backend("cudnn")
    with pytest.raises(ValueError):
        dilconv.AtrousConv2d(2, 2, 3, backend="nope")


def test_use_backend_is_context_manager_and_setter():
    assert dilconv.current_backend() == "auto"
    with dilconv.use_backend("torch"):
        assert dilconv.current_backend() == "torch"
    assert dilconv.current_backend() == "auto"
    dilconv.use_backend("torch")
    assert dilconv.current_backend() == "torch"


@pytest.mark.skipif(not _ext.loaded, reason="the compiled extension is not available")
def test_cpu_kernels_are_compiled_parallel():
    """at::parallel_for is a header template: it only spreads work over threads in a translation
    unit compiled with OpenMP, otherwise every CPU kernel silently runs on one thread (as dilconv
    did before -fopenmp). The library must call the OpenMP runtime, and that runtime must be the
    one torch loaded (one thread pool, set by torch.set_num_threads)."""
    import importlib.util

    path = importlib.util.find_spec("dilconv._C").origin
    with open(path, "rb") as f:
        blob = f.read()
    assert b"GOMP_parallel" in blob, f"{path} does not call the OpenMP runtime (built without -fopenmp)"
    if sys.platform.startswith("linux"):
        with open("/proc/self/maps") as f:
            gomp = {line.split()[-1] for line in f if "libgomp" in line and line.split()[-1].startswith("/")}
        assert len(gomp) <= 1, f"two OpenMP runtimes loaded: {sorted(gomp)}"


def test_auto_remembers_its_pick_per_signature():
    """"auto" remembers its pick per call signature, so a layer it sends to torch pays torch's
    time only; a different signature (grad mode, layout, shape) is decided afresh, bad arguments
    still raise, and registering a backend forgets every pick."""
    import torch
    import torch.nn.functional as F

    registry.AUTO_PICKS.clear()
    x, w = torch.randn(1, 4, 9, 9), torch.randn(6, 4, 3, 3)
    with registry.use_backend("auto"):
        y1 = dilconv.functional.conv2d(x, w, None, 1, 1)
        assert len(registry.AUTO_PICKS) == 1
        pick = next(iter(registry.AUTO_PICKS.values()))
        assert (pick if isinstance(pick, str) else pick[0]) in registry.NAMES
        y2 = dilconv.functional.conv2d(x, w, None, 1, 1)
        torch.testing.assert_close(y1, F.conv2d(x, w, None, 1, 1))
        torch.testing.assert_close(y2, y1)
        dilconv.functional.conv2d(x.contiguous(memory_format=torch.channels_last), w, None, 1, 1)
        dilconv.functional.conv2d(x.requires_grad_(), w, None, 1, 1)
        assert len(registry.AUTO_PICKS) == 3
        for _ in range(2):  # list arguments are remembered as tuples
            torch.testing.assert_close(dilconv.functional.conv2d(x, w, None, [1, 1], [1, 1]),
                                       F.conv2d(x, w, None, 1, 1))
        assert len(registry.AUTO_PICKS) == 4
        with pytest.raises(RuntimeError, match="groups"):
            dilconv.functional.conv2d(x, w, None, 1, 1, 1, 3)
        assert len(registry.AUTO_PICKS) == 4
        with torch.autocast("cpu", dtype=torch.bfloat16):
            dilconv.functional.conv2d(x, w, None, 1, 1)
        assert len(registry.AUTO_PICKS) == 4  # autocast casts first: not remembered
    # a remembered pick of dilconv's own kernels replays the normalised arguments ('same')
    xd, wd = torch.randn(1, 8, 40, 40), torch.randn(8, 1, 3, 3)
    with registry.use_backend("auto"):
        for _ in range(2):
            torch.testing.assert_close(dilconv.functional.conv2d(xd, wd, None, 1, "same", 2, 8),
                                       F.conv2d(xd, wd, None, 1, "same", 2, 8))
            torch.testing.assert_close(dilconv.functional.conv2d(xd[0], wd, None, 1, "same", 2, 8),
                                       F.conv2d(xd[0], wd, None, 1, "same", 2, 8))
    registry.register_backend(registry.get_backend("torch"))
    assert registry.AUTO_PICKS == {}


def test_named_backend_skips_the_checks_a_signature_passed(monkeypatch):
    """A named backend's conv2d remembers each signature that passed the argument checks (keyed
    by the backend object too, apart from "auto"'s picks) and skips them on the next call of
    that signature, with the same result ('same' padding replayed normalised); another signature
    is checked afresh, bad arguments are never remembered (they raise every time), and a backend
    object put in the name's place is checked afresh (tests/test_bench.py swaps one in)."""
    import torch
    import torch.nn.functional as F

    registry.AUTO_PICKS.clear()
    x, w = torch.randn(1, 8, 20, 20), torch.randn(8, 1, 3, 3)
    ref = F.conv2d(x, w, None, 1, "same", 2, 8)
    y1 = dilconv.functional.conv2d(x, w, None, 1, "same", 2, 8, backend="cpu")
    assert [k[0] for k in registry.AUTO_PICKS] == [("conv2d", registry.get_backend("cpu"))]
    calls = []
    real = dilconv.functional._check_common
    monkeypatch.setattr(dilconv.functional, "_check_common",
                        lambda *a: (calls.append(a), real(*a))[1])
    y2 = dilconv.functional.conv2d(x, w, None, 1, "same", 2, 8, backend="cpu")
    assert calls == []  # remembered: no checks
    torch.testing.assert_close(y1, ref)
    torch.testing.assert_close(y2, ref)
    dilconv.functional.conv2d(x, w, None, 1, "same", 2, 8, backend="auto")  # its own entry
    dilconv.functional.conv2d(x, w, None, 2, 1, 2, 8, backend="cpu")  # another signature
    assert len(calls) == 2 and len(registry.AUTO_PICKS) == 3
    for _ in range(2):
        with pytest.raises(RuntimeError, match="groups"):
            dilconv.functional.conv2d(x, w, None, 1, 1, 1, 3, backend="cpu")
    assert len(calls) == 4 and len(registry.AUTO_PICKS) == 3
    monkeypatch.setitem(registry._BACKENDS, "cpu", type(registry.get_backend("cpu"))())
    dilconv.functional.conv2d(x, w, None, 1, "same", 2, 8, backend="cpu")
    assert len(calls) == 5
