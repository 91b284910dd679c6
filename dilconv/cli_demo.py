"""`python -m dilconv demo`: every usable backend on a DeepLab-style atrous block vs torch."""
from __future__ import annotations

import time

import torch

import dilconv
from dilconv import registry


def add_arguments(parser):
    parser.add_argument("--size", type=int, default=33, help="feature map side")


def _block(backend):
    torch.manual_seed(0)
    return torch.nn.Sequential(
        dilconv.AtrousConv2d(64, 64, 3, padding=6, dilation=6, backend=backend),
        dilconv.DepthwiseSeparableConv2d(64, 64, 3, padding=12, dilation=12, mid_relu=True, backend=backend),
        dilconv.GroupedConv2d(64, 64, 3, padding=1, groups=8, backend=backend),
        dilconv.ConvTranspose2d(64, 32, 4, stride=2, padding=1, backend=backend),
    )


def main(args) -> int:
    torch.manual_seed(0)
    x = torch.randn(2, 64, args.size, args.size)
    ref = _block("torch").double()(x.double())
    print(f"atrous block on {tuple(x.shape)}, fp32 vs a float64 torch reference")
    for name in registry.backends():
        if name in ("auto",) or registry.get_backend(name).device_types == ("cuda",):
            continue
        model = _block(name)
        try:
            with torch.no_grad():
                t0 = time.perf_counter()
                y = model(x)
                dt = time.perf_counter() - t0
        except NotImplementedError as e:
            print(f"  {name:9s} not all layers supported yet: {e}")
            continue
        err = ((y.double() - ref).abs().max() / ref.abs().max()).item()
        print(f"  {name:9s} max rel. error {err:.1e}   {dt * 1e3:7.1f} ms (one cold call)")
    return 0
