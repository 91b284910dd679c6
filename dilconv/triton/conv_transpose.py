"""Transposed conv2d (stride, padding, output_padding, groups, dilation) in the gather form.

    y = conv_transpose2d(x, w) + b,  x [N, Cin, H, W], w [Cin, Cout/G, R, S], y [N, Cout, Ho, Wo]

A transposed convolution is the input gradient (dgrad) of the convolution with the same weight:
each output pixel gathers the input pixels that a forward conv2d would have scattered into it.
Computing it as that gather (rather than scattering each input pixel with atomics, or convolving
a zero-stuffed input) writes every output element exactly once, needs no atomics, and skips the
taps that cannot reach a pixel: conv_igemm.conv2d_dgrad_kernel splits the grid into stride phases
so that whole taps are skipped per program. In conv2d terms, K = Cin (the channels gathered),
C = Cout, and the weight layout [Cin, Cout/G, R, S] is exactly conv2d's [K, C/G, R, S].
output_padding only enlarges Ho/Wo: the extra rows are gathered like any other (from the taps that
reach them, zero elsewhere) and then get the bias. The kernel's bias epilogue adds b[Cout].
"""
from __future__ import annotations

from dilconv.triton import conv_igemm


def fprop(x, weight, bias, stride, padding, dilation, groups, out):
    return conv_igemm.dgrad(x, weight, bias, stride, padding, dilation, groups, out)


def aot_specs():
    spec = dict(kernel=conv_igemm.conv2d_dgrad_kernel, name="conv_transpose2d",
                pointers={"dy_ptr": "x", "w_ptr": "x", "b_ptr": "x", "dx_ptr": "x"},
                constexprs={"HAS_BIAS": True}, ones=("sdq", "sws", "sxw"),
                dtypes=("fp16", "fp32"), all_configs=False)
    return [spec]
