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
