"""The one closeness check of the kernel tests: the largest absolute error against the largest
reference magnitude (a relative error of the whole tensor, not element by element: values that
cancel to near zero carry the rounding of the large terms they came from)."""

import torch


def assert_close_rel(got: torch.Tensor, ref: torch.Tensor, tol: float = 1e-5, floor: float = 0.0):
    """max|got - ref| <= tol * max(max|ref|, floor), computed in float64, shapes equal (a
    broadcast would let an empty or mis-shaped result pass). `floor`: the smallest scale, for
    references that may be all near zero (1.0: an absolute tolerance below magnitude 1)."""
    assert got.shape == ref.shape, f"shape {tuple(got.shape)} != {tuple(ref.shape)}"
    if ref.numel() == 0:
        return
    err = (got.double() - ref.double()).abs().max().item()
    scale = max(ref.double().abs().max().item(), floor, 1e-300)
    assert err <= tol * scale, f"max error {err} > {tol} x scale {scale}"
