"""The backend registry: which implementation computes a dilconv op.

Backends, by name:
  "torch"    torch.nn.functional (cuDNN on a GPU, oneDNN on the CPU): the reference
  "cpu"      dilconv's C++ CPU kernels (csrc/cpu)
  "cuda"     dilconv's hand-written CUDA kernels (csrc/cuda, csrc/kernels)
  "cuda-emu" the same CUDA kernels compiled for the host against the CUDA emulation, on CPU
             tensors: the way the CUDA kernels are tested without a GPU
  "triton"   dilconv's Triton kernels (dilconv/triton); on CPU tensors under TRITON_INTERPRET=1
  "auto"     the default: per call, the best usable backend for the tensors' device and problem

A backend declares which problems it handles (`unsupported(problem)` returns the reason it does
not, or None). "auto" only picks backends that handle the problem; an explicitly requested
backend that does not handle it raises NotImplementedError saying why.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable, Optional

import torch

from dilconv import _ext

NAMES = ("torch", "cpu", "cuda", "cuda-emu", "triton", "auto")
INT32_MAX = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class Problem:
    """What a backend needs to know to accept or refuse a call (all static: safe under
    torch.compile)."""

    op: str  # "conv2d" | "conv_transpose2d" | "separable_conv2d"
    device: str  # "cpu" | "cuda" | ...
    dtype: torch.dtype
    n: int
    c: int  # input channels
    h: int
    w: int
    k: int  # output channels
    r: int  # kernel height
    s: int  # kernel width
    stride: tuple
    padding: tuple
    dilation: tuple
    groups: int
    channels_last: bool
    max_numel: int  # largest element count among the tensors involved
    requires_grad: bool
    mid_channels: int = 0  # separable_conv2d: depthwise outputs (C * multiplier)

    @property
    def depthwise(self) -> bool:
        return self.groups == self.c


class Backend:
    name: str = ""
    device_types: tuple = ()

    def available(self) -> Optional[str]:
        """None when usable on this machine, else why not."""
        return None

    def unsupported(self, p: Problem) -> Optional[str]:
        """None when this backend computes problem `p`, else why not."""
        if p.device not in self.device_types:
            return f"backend {self.name!r} runs on {'/'.join(self.device_types)} tensors, got {p.device}"
        return None

    def prefers(self, p: Problem) -> bool:
        """Whether "auto" should pick this backend over "torch" for `p` (speed policy)."""
        return True

    # the three forward entry points; autograd comes with the ops
    def conv2d(self, input, weight, bias, stride, padding, dilation, groups):
        raise NotImplementedError

    def conv2d_clamp(self, input, weight, bias, stride, padding, dilation, groups, lo, hi):
        """conv2d then clamp(lo, hi) in place (hi = inf: ReLU-like); backends with a fused op
        override it."""
        return _clamp_(self.conv2d(input, weight, bias, stride, padding, dilation, groups), lo, hi)

    def conv_transpose2d(self, input, weight, bias, stride, padding, output_padding, groups, dilation):
        raise NotImplementedError

    def separable_conv2d(self, input, dw_weight, dw_bias, pw_weight, pw_bias, stride, padding,
                         dilation, mid_relu, out_relu):
        raise NotImplementedError


def _clamp_(y: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """y clamped to [lo, hi] in place, through the ops torch.nn's ReLU / ReLU6 use."""
    if hi == float("inf"):
        return torch.relu_(y) if lo == 0 else y.clamp_(min=lo)
    return torch.nn.functional.hardtanh_(y, lo, hi)


class TorchBackend(Backend):
    name = "torch"
    device_types = ("cpu", "cuda", "meta", "mps", "xpu")

    def unsupported(self, p):
        return None

    def conv2d(self, input, weight, bias, stride, padding, dilation, groups):
        return torch.nn.functional.conv2d(input, weight, bias, stride, padding, dilation, groups)

    def conv_transpose2d(self, input, weight, bias, stride, padding, output_padding, groups, dilation):
        return torch.nn.functional.conv_transpose2d(
            input, weight, bias, stride, padding, output_padding, groups, dilation)

    def separable_conv2d(self, input, dw_weight, dw_bias, pw_weight, pw_bias, stride, padding,
                         dilation, mid_relu, out_relu):
        mid = torch.nn.functional.conv2d(input, dw_weight, dw_bias, stride, padding, dilation,
                                         input.shape[1])
        if mid_relu:
            mid = torch.relu(mid)
        out = torch.nn.functional.conv2d(mid, pw_weight, pw_bias)
        return torch.relu(out) if out_relu else out


class OpsBackend(Backend):
    """A backend whose ops are `torch.ops.dilconv.<name><suffix>` (the compiled extension's, or
    ops a Python module registers under that suffix)."""

    suffix = ""
    dispatch_key = "CPU"
    dtypes: tuple = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

    def available(self):
        if not _ext.loaded:
            return f"the compiled extension is not available ({_ext.load_error}); {_ext.BUILD_HINT}"
        if not _ext.has_kernel("conv2d" + self.suffix, self.dispatch_key):
            return f"dilconv was built without {self.name!r} kernels; {_ext.BUILD_HINT}"
        return None

    def unsupported(self, p):
        why = super().unsupported(p)
        if why:
            return why
        if p.dtype not in self.dtypes:
            return f"backend {self.name!r} does not support dtype {p.dtype}"
        if p.max_numel > INT32_MAX:
            return (f"backend {self.name!r} uses 32-bit indexing and a tensor has {p.max_numel} "
                    f"elements (> 2**31 - 1); use backend='torch' or split the batch")
        return None

    def _call(self, name, *args):
        return getattr(torch.ops.dilconv, name + self.suffix)(*args)

    def conv2d(self, input, weight, bias, stride, padding, dilation, groups):
        return self._call("conv2d", input, weight, bias, stride, padding, dilation, groups)

    def conv2d_clamp(self, input, weight, bias, stride, padding, dilation, groups, lo, hi):
        """conv2d then clamp(lo, hi) (hi = inf: ReLU-like), in one op where the backend has it
        (the CPU kernels apply it as they store; elsewhere the op is conv2d + clamp_)."""
        if self.suffix != "":
            return _clamp_(self.conv2d(input, weight, bias, stride, padding, dilation, groups),
                           lo, hi)
        return torch.ops.dilconv.conv2d_clamp(input, weight, bias, stride, padding, dilation,
                                              groups, lo, hi)

    def conv_transpose2d(self, input, weight, bias, stride, padding, output_padding, groups, dilation):
        return self._call("conv_transpose2d", input, weight, bias, stride, padding, output_padding,
                          groups, dilation)

    def separable_conv2d(self, input, dw_weight, dw_bias, pw_weight, pw_bias, stride, padding,
                         dilation, mid_relu, out_relu):
        return self._call("separable_conv2d", input, dw_weight, dw_bias, pw_weight, pw_bias, stride,
                          padding, dilation, mid_relu, out_relu)


class CpuBackend(OpsBackend):
    name = "cpu"
    device_types = ("cpu",)

    def prefers(self, p):
        # "auto" picks dilconv's CPU kernels only where they beat oneDNN (benchmarks/results).
        return cpu_auto_policy(p)


_AVX512: Optional[bool] = None


def _avx512() -> bool:
    """Whether this CPU runs the AVX-512 variants (dilconv's kernels, and oneDNN's JIT kernels
    with them): the machine fact the policy's measured differences below are keyed on (an
    AVX-512 Xeon against an AVX2 EPYC, Zen 3; both 2 cores). Tests set _AVX512 to take either."""
    global _AVX512
    if _AVX512 is None:
        try:
            _AVX512 = torch.ops.dilconv.cpu_isa() == "avx512"
        except (AttributeError, RuntimeError):
            _AVX512 = False
    return _AVX512


# (one function per fact with its `global`: torch.compile traces the policy, and dynamo cannot
# trace a shared helper that reaches the module's variables through globals())
_INTEL: Optional[bool] = None


def _intel() -> bool:
    """Whether this is an Intel CPU (torch.ops.dilconv.cpu_vendor). Tests set _INTEL."""
    global _INTEL
    if _INTEL is None:
        try:
            _INTEL = torch.ops.dilconv.cpu_vendor() == "intel"
        except (AttributeError, RuntimeError):
            _INTEL = False
    return _INTEL


def _cpu_gemm_paths_win() -> bool:
    """Whether the choices below that rest on torch's BLAS GEMM (MKL: the NCHW 1x1 path, the
    dense per-tap GEMMs, the transposed convolution, the fused separable's pointwise half in
    inference) apply here. They were measured on an AVX-512 Xeon. On AMD EPYCs the same GEMMs
    run well below oneDNN's own kernels, so there those convolutions stay with oneDNN: Zen 3
    (AVX2) 1x1 layers 0.48-1.03x of oneDNN in inference (0.72x summed over DeepLabV3+'s),
    0.65-0.91x forward + backward; Zen 4 (AVX-512; 2 images, interleaved) 1x1 forward 0.46-1.03x
    (304->256 @129^2 0.69x, 16->96 @257^2 0.46x), forward + backward 0.74-1.00x, the dense 3x3
    d12 256->256 @64^2 0.61x, the transposed 4x4 s2 21->21 @34^2 (FCN) 0.62x (Zen 3 0.81x), the
    fused separable forward 1.0-1.05x. A square sgemm there: ~190 GFLOP/s on 2 cores, the Xeon's
    ~350."""
    return _avx512() and _intel()


# the channel and map-size limits of the two rules below (python -m dilconv info prints them;
# POINTWISE_MAX_CK: training only)
POINTWISE_MAX_CK = 1280 * 256
SEPARABLE_MAX_HW, SEPARABLE_MAX_CK = 48 * 48, 728 * 728


def _cpu_pointwise_wins(p: Problem) -> bool:
    """Whether dilconv's register-tiled 1x1 kernel (csrc/cpu gemm_bcast: NCHW, bias and clamp in
    registers; the forward and the input gradient, the weight gradient by it on small maps and
    narrow sides, else by BLAS: csrc/cpu use_wgrad_bcast) beats oneDNN: measured on an AVX-512
    AMD CPU (Zen 4) against oneDNN's fused conv + ReLU6 (what "auto" runs otherwise), each call
    right after oneDNN's, 2 threads. Forward at batch 1 on every DeepLabV3+ MobileNetV2 1x1 at
    513^2: 1.4-2.2x with 16-32 input or 21-24 output channels (16->96 @257^2, 24->144 / 144->24 /
    96->24 / 256->21 @129^2, 32->192 @65^2), 1.1-1.4x on 64->384 ... 576->96 @33^2, 1.0-1.07x on
    the widest (960->160, 160->960, 960->320, 1280->256 @33^2, 304->256 @129^2): every one in
    inference. Training (batch 2, forward + both gradients) up to c * k = POINTWISE_MAX_CK
    (1280 * 256, the widest measured): the widest seven (960->160, 160->960, 960->320, 1280->256
    @33^2) run at oneDNN's speed in isolation (weight gradient 0.97-1.03x, forward and input
    gradient 0.95-1.05x), and in the network the step ran faster with them here than with
    oneDNN: DeepLabV3+ MobileNetV2 513^2 NCHW, 2 images, steps alternated in one process, two
    runs: 590 vs 597 ms, 576 vs 589 (the suite's network rows had "cpu", which takes them, 5-14 ms
    ahead of "auto", which did not, in four runs). Not measured on Intel (where MKL's GEMM runs
    these, _cpu_gemm_paths_win) nor with AVX2."""
    return _avx512() and not _intel() and (not p.requires_grad or p.c * p.k <= POINTWISE_MAX_CK)


def _cpu_pixels_pointwise_wins(p: Problem) -> bool:
    """Whether the same register-tiled kernel over channels-last pixel rows (csrc/cpu
    use_pixels_bcast: the pixels as its rows, bias and clamp in registers) beats what "auto" runs
    otherwise in channels-last inference, oneDNN's inference convolution with packed weights and
    the activation fused (dilconv.modules, `onednn-packed`): measured on an AVX-512 AMD CPU
    (Zen 4), batch 1, bias + ReLU6, 2 threads, alternated in one process: on 257x257 maps with
    at most 32 channels a side 1.38-1.43x (16 -> 96, 32 -> 16); elsewhere on DeepLabV3+
    MobileNetV2's 1x1s 0.90-1.01x (24 -> 144 / 144 -> 24 @129^2 0.96-1.01x, 33^2 maps 0.91-1.00x,
    256 -> 21 and 304 -> 256 @129^2 0.90-0.92x), so those stay with oneDNN. Training (forward +
    backward through autograd, 2 images, the weight gradient by the same kernel) against torch:
    the same 257^2 shapes 1.19-1.22x (16 -> 96, 96 -> 16, 32 -> 16), the others 0.90-1.04x
    (256 -> 21 @129^2 1.12x, not taken). Not measured on Intel nor with AVX2."""
    return _avx512() and not _intel() and min(p.c, p.k) <= 32 and p.h * p.w >= 256 * 256


def _cpu_separable_wins(p: Problem) -> bool:
    """Whether the fused separable forward (its pointwise half by gemm_bcast, as
    _cpu_pointwise_wins) beats "auto"'s unfused pair (dilconv's depthwise, oneDNN's or dilconv's
    1x1) in NCHW inference, on an AVX-512 AMD CPU (Zen 4; suite callables against torch's pair,
    each call right after it, three runs): 33x33 maps up to 728 x 728 channels, 728->256 rate 6
    1.09-1.31x vs 1.03-1.08x, 728->728 1.10-1.20x vs 1.01-1.06x, 2048->256 rate 6 0.94x vs 0.93x;
    not larger maps (256->256 @65^2 a tie, 728->728 @65^2 rate 2 1.03x vs 1.05x, 304->256 @129^2
    1.02-1.12x vs 1.14-1.23x) nor wider pointwise halves (1024->1536, 1536->2048 @33^2 0.85-0.89x
    vs 0.98-1.01x). Not measured channels-last (its pointwise half is BLAS's), on Intel nor with
    AVX2."""
    return (_avx512() and not _intel() and not p.channels_last
            and p.h * p.w <= SEPARABLE_MAX_HW and p.c * p.k <= SEPARABLE_MAX_CK)


def _onednn_dw_slow(p: Problem) -> bool:
    """Where oneDNN's depthwise convolution (torch 2.14, CPU) leaves its fast kernel: dilated with
    a padding of 5 or more with AVX2, 7 or more with AVX-512.
    AVX2 EPYC (3x3 'same' from rate 5, 5x5 from 3, 7x7 from 2): channels-last 3x3, 64ch @65^2,
    2 threads: 0.14-0.21 ms at rates 1-6 with padding <= 4 (and undilated with padding 5),
    2.9-3.1 ms dilated with padding 5; 256ch 0.36 -> 14.9 ms; NCHW 0.25 -> 0.8 ms (NCHW is
    erratic at every rate).
    AVX-512 Xeon (3x3 from rate 7, 5x5 from 4, 7x7 from 3): channels-last 64ch @65^2 3x3 0.10 ms
    at rate 6, 0.45-0.62 ms at rates 7-10; 5x5 0.14 ms at rate 3 (padding 6), 1.2 ms at rate 4;
    7x7 0.19 ms at rate 2 (padding 6), 2.8 ms at rate 3; NCHW alike (0.2-0.3 -> 0.7-3.6 ms).
    dilconv's kernels there: 3.7-9.8x from padding 7; at padding 5-6 0.88-1.15x 3x3 and
    0.55-0.81x 5x5/7x7 channels-last, 0.68-1.11x 5x5/7x7 NCHW, so those stay with oneDNN."""
    return max(p.dilation) > 1 and max(p.padding) >= (7 if _avx512() else 5)


def _cl_dw_stream_wins() -> bool:
    """Whether dilconv's channels-last depthwise forward beats oneDNN's where it streams
    (_cl_dw_streams): measured on an AVX-512 AMD CPU (Zen 4) only."""
    return _avx512() and not _intel()


def _cl_dw_streams(p: Problem, out_pixels: int) -> bool:
    """Whether a channels-last depthwise forward streams x and y from memory (csrc/cpu
    nhwc_streams: the two together beyond 20 MiB), where its kernel prefetches. There, on an
    AVX-512 Zen 4, it beats oneDNN's on maps of 64x64 and more (the suite's callables, each call
    right after torch's, 2 threads: 728ch 65^2 d2 1.08-1.37x, 960ch 65^2 d4 1.23-1.24x at batch
    1; at a batch of 16 32ch 257^2 1.17x, 144ch 129^2 1.76x), not on 33x33 maps at a batch of 16
    (384ch 1.24x, but 576ch d2 0.91x and 960ch d2 0.96x: the policy takes none of them); below
    20 MiB, in the cache, it runs 0.79-1.25x, so those stay with oneDNN. Not measured on an
    Intel or an AVX2 CPU since the kernel's prefetches: oneDNN there."""
    size = 8 if p.dtype == torch.float64 else 4
    return p.n * (p.h * p.w + out_pixels) * p.c * size > 20 << 20


def _cl_dw_blocks_win(p: Problem, out_pixels: int) -> bool:
    """Where dilconv's channels-last depthwise 3x3 stride-1 forward beats oneDNN's in the cache:
    its interior pixels by register blocks (csrc/cpu nhwc_3x3_rows: AVX-512 on AMD, at least 4
    vectors of channels, x and y not streaming from memory). Zen 4, 2 threads, ours and oneDNN's
    in every order, oneDNN/ours: 960ch 33^2 d2 1.26-1.34x, 576ch 1.22-1.27x, 384ch 33^2 x2
    1.41x, 128ch 33^2 1.43x, 1024ch 33^2 1.06-1.19x, 256ch 65^2 d4 1.51x, 192ch 65^2 1.27x,
    64ch 65^2 1.36x; not taken: 2048ch 17^2 (0.81-1.02x: maps under 32x32), 4 x 960ch 33^2
    (16.7 MB: 0.91x; x and y over 16 MiB), 144ch 129^2 (19 MB, 1.09-1.16x, above that line).
    Not measured on Intel: oneDNN there."""
    size = 8 if p.dtype == torch.float64 else 4
    return (_avx512() and not _intel() and (p.r, p.s) == (3, 3) and p.k == p.c
            and p.c * size >= 256 and out_pixels >= 32 * 32
            and p.n * (p.h * p.w + out_pixels) * p.c * size <= 16 << 20)


def cpu_auto_policy(p: Problem) -> bool:
    """Where dilconv's CPU kernels beat oneDNN: the op suite at batch 1, fp32, 2 threads, on an idle
    machine, interleaved A/B (`python -m dilconv bench --dtype fp32 --batch 1`; speed-ups
    torch/cpu):
      * depthwise, stride 1, NCHW: forward 1.07-2.2x with <= 9 taps (7x7: 0.85x), forward +
        backward 1.2-10x (torch's dilated depthwise backward is its weak spot); on 7x7 maps
        (DeepLabV3+ at 97x97) 0.7-1.1x undilated, 2.5x dilated training; channels-last
        forward in the cache 1.1-1.5x 3x3 with 4+ vectors of channels on an AVX-512 Zen 4
        (_cl_dw_blocks_win), else 0.8-1.25x (oneDNN's best case), 1.1-1.8x where x and y stream
        from memory on maps of 64x64 and more on an AVX-512 Zen 4 (_cl_dw_streams), 2-20x where
        oneDNN's is slow
        (_onednn_dw_slow),
        forward + backward 3.9-6.2x dilated, 2.0x 7x7,
        undilated 3x3 0.85-1.04x at batch 1, 1.1-1.2x at 2+; stride 2 NCHW (both column phases
        packed / unpacked in one vectorised pass): forward 1.4-1.9x, forward + backward
        1.1-1.7x; channels-last forward 0.8-0.9x, training 1.03-1.13x at a batch of 2+;
      * separable, stride 1 (depthwise tile in cache, pointwise as a GEMM): forward 1.05-1.56x
        undilated and at rates 2-6, 1.8-2.8x at rate 12, either layout (728->256 @33^2,
        256->256 @65^2, 96->96 @129^2, 304->256 @25-129^2; one tie, 1.00x channels-last rate 6
        @129^2); training 1.5-2.2x dilated, 0.74-0.98x undilated; on an AVX2 EPYC inference
        wins only where oneDNN's depthwise is slow (1.1-5.1x; 0.69-1.09x at rates 1-4),
        training 1.6-2.4x dilated; on an AVX-512 AMD CPU also NCHW inference on maps up to
        48x48 with up to 728 x 728 channels (_cpu_separable_wins: 1.1-1.3x where the unfused
        pair ran 1.0-1.1x); where it is not fused, dilconv.functional runs it as its two
        convs, each picked by this policy (its decoder's two undilated separables: DeepLabV3+
        513^2 inference on the EPYC 1.18 -> 1.22x NCHW, 1.27 -> 1.34x channels-last, paired in
        one process);
      * 1x1 stride 1, NCHW (the pointwise path: GEMMs on the planes, bias and clamp per
        cached block): inference 1.03-1.9x on every MobileNetV2/DeepLabV3+ 1x1 at 513^2 from
        32->16 @257^2 to 960->320 @33^2 with bias (+ReLU6 1.1-2.0x), 1280->256 @33^2 0.98-1.0x
        (not taken); forward + backward at batch 2 1.03-2.5x on all of them; on an AVX-512 AMD
        CPU by the register-tiled kernel instead (_cpu_pointwise_wins): forward 1.0-2.2x, the
        gradients 0.96-2.0x, in training up to 1280->256 channels; channels-last by the same
        kernel over pixel rows, inference on 257x257 maps with <= 32 channels a side
        (_cpu_pixels_pointwise_wins: 1.4x of oneDNN's packed-weight fused convolution;
        training there 1.2x);
      * grouped, <= 4 channels per group, NCHW, wide rows (ResNeXt 32x4d stage 1): 1.5x forward,
        2.6x forward + backward; channels-last with 2 or 4 channels in and out a group
        (channel-vectorised, one shuffle per input vector and channel; AVX2 EPYC, 28^2-112^2
        maps): forward 1.6-3.8x, forward + backward 1.5-3.0x at stride 1, stride-2 forward 1.4x
        (its backward 0.6x: oneDNN); 14^2 1.1x, 7^2 0.8-0.9x (not taken); 8 or more channels a
        group 0.06-0.7x either layout;
      * transposed, NCHW inference: 1.02-3.4x (FCN/U-Net upsampling); channels-last 0.1-0.9x;
        training 1.05x at best (FCN 21->21 4x4 s2 @34^2), 0.69-1.14x on an AVX2 EPYC (FCN,
        U-Net 2x2 s2 decoders), so it stays with oneDNN;
      * dense 3x3 at ASPP rates on small maps, NCHW (per-tap GEMMs skip the taps that read
        padding): 1.3-2.0x forward, 1.1-2.1x forward + backward where most taps read padding;
        channels-last 0.4-0.7x forward.
    The GEMM-based choices (1x1, dense, transposed, fused separable inference) hold where they
    were measured, an AVX-512 Intel CPU (see _cpu_gemm_paths_win); elsewhere those convolutions
    go to oneDNN.
    Everything else goes to oneDNN, and so does half precision (oneDNN has bf16/fp16 kernels;
    dilconv's CPU kernels compute in float32)."""
    if p.dtype not in (torch.float32, torch.float64):
        return False
    d = max(p.dilation)
    if p.op == "separable_conv2d":
        if p.stride != (1, 1):
            return False
        if p.requires_grad:
            return d > 1
        # inference: the pointwise GEMM is most of the work, and where torch's BLAS GEMM is
        # slower than oneDNN (AVX2 EPYC) the fused op wins only where oneDNN's depthwise is slow
        # (_onednn_dw_slow): 1.1-5.1x at rates 5-12, 0.69-1.09x at rates 1-4 (3x3 'same';
        # 256->256 @65^2, 304->256 @129^2, 728->256 @33^2)
        return _cpu_gemm_paths_win() or _onednn_dw_slow(p) or _cpu_separable_wins(p)
    if p.op == "conv_transpose2d":
        return _cpu_gemm_paths_win() and not p.channels_last and not p.requires_grad
    if p.op != "conv2d":
        return False
    cg = p.c // p.groups
    q = (p.w + 2 * p.padding[1] - p.dilation[1] * (p.s - 1) - 1) // p.stride[1] + 1
    if cg == 1:  # depthwise (any channel multiplier)
        if p.stride != (1, 1):
            # MobileNetV2's stride-2 layers: NCHW forward 1.4-1.9x, forward + backward 1.1-1.7x;
            # channels-last forward 0.8-0.9x, training 0.9x at batch 1, 1.03-1.13x at 2+
            if p.stride != (2, 2):  # (measured only there)
                return False
            if p.channels_last:
                return (p.requires_grad and p.n >= 2) or _onednn_dw_slow(p)
            po = (p.h + 2 * p.padding[0] - p.dilation[0] * (p.r - 1) - 1) // p.stride[0] + 1
            return p.r * p.s <= 9 and po * q >= 128
        pq = (p.h + 2 * p.padding[0] - p.dilation[0] * (p.r - 1)) * q  # output pixels (stride 1)
        if not p.channels_last:
            # tiny maps (7x7, the end of a backbone at small inputs): oneDNN's call overhead is lower
            if p.requires_grad:
                return d > 1 or pq >= 256
            # 5x5/7x7 where oneDNN's is slow: 4-8x (64x33^2 5x5 rate 5, 7x7 rates 3 and 6)
            return (p.r * p.s <= 9 and pq >= 128) or _onednn_dw_slow(p)
        # channels-last undilated 3x3 training: 1.1-1.2x forward + backward at a batch of 2+,
        # 0.85-1.04x at batch 1; the forward where oneDNN's is slow: 2-20x (3x3 rates 5-12,
        # 5x5 rate 5, 7x7 rates 3-6; 256x9^2 to 96x257^2)
        if _onednn_dw_slow(p):
            return True
        if p.requires_grad:
            return d > 1 or p.r * p.s > 9 or p.n >= 2
        return ((p.r * p.s <= 9 and p.k == p.c and pq >= 64 * 64 and _cl_dw_streams(p, pq)
                 and _cl_dw_stream_wins()) or _cl_dw_blocks_win(p, pq))
    if (p.groups == 1 and (p.r, p.s) == (1, 1) and p.stride == (1, 1) and p.padding == (0, 0)
            and not p.channels_last):
        # GEMMs straight on the NCHW planes (forward with bias and activation applied per
        # cached column block; both gradients likewise), where oneDNN reorders around its own
        if _cpu_gemm_paths_win():
            return p.requires_grad or p.c * p.k <= 960 * 320
        return _cpu_pointwise_wins(p)
    if (p.groups == 1 and (p.r, p.s) == (1, 1) and p.stride == (1, 1) and p.padding == (0, 0)
            and p.channels_last):
        return _cpu_pixels_pointwise_wins(p)
    if cg <= 8:
        # grouped with few channels per group: NCHW the planar stencils; channels-last the
        # channel-vectorised kernels, which need as many outputs as inputs a group (2 or 4 here)
        # and, for the input gradient, stride 1 (stride 2 falls back to the planar scatter)
        if cg > 4 or p.groups == 1 or q < 28:
            return False
        if not p.channels_last:
            return True
        return (cg in (2, 4) and p.k // p.groups == cg and p.c >= 16
                and (p.stride == (1, 1) or (p.stride == (2, 2) and not p.requires_grad)))
    # dense/wide groups: the per-tap GEMMs skip the taps that read padding, which pays once most
    # of them do (ASPP rates 18-36; DeepLab's 33^2/65^2 maps) and the GEMMs are large
    if p.channels_last or cg < 128 or p.k // p.groups < 128:
        return False
    frac = _valid_tap_fraction(p)
    return _cpu_gemm_paths_win() and (frac < 0.45 or (frac < 0.6 and not p.requires_grad))


def _valid_tap_fraction(p: Problem) -> float:
    """Share of (tap, output pixel) pairs that read inside the input (csrc/cpu valid_fraction)."""
    def axis(size, k, st, pad, d):
        out = (size + 2 * pad - d * (k - 1) - 1) // st + 1
        total = 0
        for i in range(k):
            o = i * d - pad
            lo = 0 if o >= 0 else (-o + st - 1) // st
            hi = (size - 1 - o) // st + 1 if size - 1 - o >= 0 else 0
            hi = min(hi, out)
            total += max(0, hi - lo)
        return total / max(1, k * out)
    return (axis(p.h, p.r, p.stride[0], p.padding[0], p.dilation[0])
            * axis(p.w, p.s, p.stride[1], p.padding[1], p.dilation[1]))


def cuda_kernels_unsupported(p: Problem) -> Optional[str]:
    """Which problems dilconv's CUDA kernels (csrc/kernels, shared by "cuda" and "cuda-emu")
    compute; mirrors the kernel selection in csrc/kernels/aten_glue.h."""
    if p.op == "separable_conv2d":
        return None  # fused depthwise + pointwise (separable.cuh)
    if p.op == "conv2d" and p.depthwise and p.k % p.c == 0:
        return None  # depthwise, any channel multiplier (depthwise.cuh)
    if p.op in ("conv2d", "conv_transpose2d"):
        return None  # dense, grouped and transposed: implicit GEMM (gemm_conv.cuh)
    return f"its CUDA kernels do not implement {p.op}"


def implicit_gemm_problem(p: Problem) -> bool:
    """Whether the CUDA backends compute `p` with the implicit-GEMM kernels (gemm_conv.cuh)."""
    return p.op == "conv_transpose2d" or (p.op == "conv2d" and not (p.depthwise and p.k % p.c == 0))


class CudaBackend(OpsBackend):
    name = "cuda"
    device_types = ("cuda",)
    dispatch_key = "CUDA"

    def unsupported(self, p):
        return super().unsupported(p) or cuda_kernels_unsupported(p)

    def prefers(self, p):
        # Dense/grouped/transposed convs stay with cuDNN under "auto": no GPU timing of the
        # implicit-GEMM kernels exists to justify a static preference. With DILCONV_AUTOTUNE=1,
        # resolve() times them against cuDNN per shape instead (dilconv.autotune).
        return not implicit_gemm_problem(p)

    def available(self):
        why = super().available()
        if why:
            return why
        if not torch.cuda.is_available():
            return "no CUDA device is visible"
        return None


class AutoBackend(Backend):
    """Placeholder entry: "auto" is resolved per call by `resolve()`."""

    name = "auto"


class CudaEmuBackend(OpsBackend):
    name = "cuda-emu"
    device_types = ("cpu",)
    suffix = "_emu"

    def unsupported(self, p):
        return super().unsupported(p) or cuda_kernels_unsupported(p)

    def prefers(self, p):
        return False  # a test vehicle, never fast


_BACKENDS: dict[str, Backend] = {}
_lazy: dict[str, Callable[[], Backend]] = {}


def register_backend(backend: Backend) -> None:
    _BACKENDS[backend.name] = backend
    AUTO_PICKS.clear()


# Observers of which backend computes each call (the bench's record_resolution): resolve() and
# the functional API's direct calls of torch report to them.
PICK_OBSERVERS: list = []


def observe_pick(name: str) -> None:
    for f in PICK_OBSERVERS:
        f(name)


# "auto"'s pick per call signature (dilconv.functional fills it): a call that "auto" sends to torch
# costs torch's own time, not dilconv's argument checks on top (tens of microseconds, which is
# 10-20% of a small layer). Keys are built from shapes, strides, dtypes and arguments only. A
# named backend's conv2d calls are remembered here too (their keys carry the backend object), so
# that a signature which passed the checks once skips them.
AUTO_PICKS: dict = {}


def register_lazy_backend(name: str, factory: Callable[[], Backend]) -> None:
    """A backend whose module is imported on first use (e.g. Triton, slow to import)."""
    _lazy[name] = factory


for _b in (TorchBackend(), CpuBackend(), CudaBackend(), CudaEmuBackend(), AutoBackend()):
    register_backend(_b)


def _triton_factory() -> Backend:
    from dilconv.triton import TritonBackend  # noqa: WPS433 (imports triton)

    return TritonBackend()


register_lazy_backend("triton", _triton_factory)


class _TritonUnavailable(Backend):
    name = "triton"

    def __init__(self, why):
        self.why = why

    def available(self):
        return self.why


def get_backend(name: str) -> Backend:
    if name not in NAMES:
        raise ValueError(f"unknown dilconv backend {name!r}; the backends are {', '.join(NAMES)}")
    if name not in _BACKENDS and name in _lazy:
        try:
            _BACKENDS[name] = _lazy[name]()
        except ImportError as e:
            return _TritonUnavailable(f"{name} is not importable ({e})")
    return _BACKENDS[name]


def _usable(name: str) -> bool:
    return name == "auto" or get_backend(name).available() is None


def backends() -> list[str]:
    """The backends usable on this machine."""
    return [n for n in NAMES if _usable(n)]


def check_usable(name: str) -> None:
    if name == "auto":
        return
    why = get_backend(name).available()
    if why is not None:
        raise RuntimeError(
            f"dilconv backend {name!r} is not usable here: {why}. Usable backends: {', '.join(backends())}")


# ---------------------------------------------------------------------------------------------
# the current backend: a global with a context-manager face (a plain global, which
# torch.compile guards on, rather than a thread-local or contextvar, which it cannot trace)

_current = os.environ.get("DILCONV_BACKEND", "auto")


def current_backend() -> str:
    return _current


class use_backend:
    """Select the backend: `dilconv.use_backend("cpu")` sets it globally;
    `with dilconv.use_backend("cpu"): ...` sets it for the block and then restores the previous."""

    def __init__(self, name: str):
        global _current
        get_backend(name)  # unknown name -> ValueError
        check_usable(name)
        self.previous = _current
        self.name = name
        _current = name

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        global _current
        _current = self.previous
        return False


AUTO_ORDER = {
    "cuda": ("cuda", "triton"),
    "cpu": ("cpu",),
}


def resolve(name: Optional[str], p: Problem) -> Backend:
    """The backend that computes `p`: `name` (or the current one) checked, or the pick of "auto"."""
    b = _resolve(name, p)
    if PICK_OBSERVERS:
        observe_pick(b.name)
    return b


def _resolve(name: Optional[str], p: Problem) -> Backend:
    name = name or _current
    if name != "auto":
        b = get_backend(name)
        check_usable(name)
        why = b.unsupported(p)
        if why is not None:
            raise NotImplementedError(f"dilconv backend {name!r} cannot compute this {p.op}: {why}")
        return b
    if p.device == "cuda":
        from dilconv import autotune  # per-shape timing on the GPU when DILCONV_AUTOTUNE=1

        if autotune.enabled():
            usable = [get_backend(c) for c in AUTO_ORDER["cuda"]]
            usable = [b for b in usable if b.available() is None and b.unsupported(p) is None]
            return autotune.pick_backend(p, usable + [_BACKENDS["torch"]])
    for cand in AUTO_ORDER.get(p.device, ()):
        b = get_backend(cand)
        if b.available() is None and b.unsupported(p) is None and b.prefers(p):
            return b
    return _BACKENDS["torch"]
