import os

import torch

# With no GPU, the Triton kernels run in Triton's interpreter on CPU tensors, so the one test
# matrix covers backend "triton" too. Must be set before anything imports triton.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import dilconv


def pytest_report_header(config):
    from dilconv import _ext

    return (f"dilconv from {os.path.dirname(dilconv.__file__)}; extension loaded: {_ext.loaded}; "
            f"backends: {dilconv.backends()}")


@pytest.fixture(autouse=True)
def _seed_and_restore_backend():
    # fresh random inputs for every test, reproducible per test
    torch.manual_seed(0x5EED)
    before = dilconv.current_backend()
    yield
    dilconv.use_backend(before)
