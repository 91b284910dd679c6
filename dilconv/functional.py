"""Functional face of dilconv: torch.nn.functional's signatures plus `backend=`.

Arguments are checked here, once, for every backend, so bad input raises the exception type torch
raises (RuntimeError for the functional API) with a clear message, before any kernel runs.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from dilconv import _ext
from dilconv import registry as _backends
from dilconv._ops import conv_out_size, conv_transpose_out_size

IntOr2 = Union[int, Sequence[int]]


def _pair(name: str, v: IntOr2) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    v = tuple(int(x) for x in v)
    if len(v) == 1:
        return (v[0], v[0])
    if len(v) != 2:
        raise RuntimeError(
            f"expected {name} to be a single integer value or a list of 2 values to match the "
            f"convolution dimensions, but got {name}={list(v)}")
    return v


# strides, paddings and dilations beyond this (every backend's kernels' bound: the C++ ops'
# kMaxGeometry, torch.ops.dilconv.max_geometry()) are refused: sizes computed from 2^61-2^63
# wrap in the kernels' 64-bit arithmetic
MAX_GEOMETRY = 2**24


def _check_common(op, input, weight, bias, stride, dilation, groups):
    if not isinstance(input, torch.Tensor) or not isinstance(weight, torch.Tensor):
        raise TypeError(f"{op}: input and weight must be tensors")
    if input.dim() not in (3, 4):
        raise RuntimeError(
            f"Expected 3D (unbatched) or 4D (batched) input to {op}, but got input of size: "
            f"{list(input.shape)}")
    if weight.dim() != 4:
        raise RuntimeError(f"{op}: expected a 4D weight, but got weight of size {list(weight.shape)}")
    _check_has_channels(op, input)
    if input.device != weight.device or (bias is not None and bias.device != weight.device):
        raise RuntimeError(
            f"{op}: input, weight and bias must be on the same device, got input on {input.device}, "
            f"weight on {weight.device}" + (f", bias on {bias.device}" if bias is not None else ""))
    if input.dtype != weight.dtype or (bias is not None and bias.dtype != weight.dtype):
        raise RuntimeError(
            f"{op}: Input type ({input.dtype}) and weight type ({weight.dtype})"
            + (f" and bias type ({bias.dtype})" if bias is not None else "") + " should be the same")
    if isinstance(groups, bool) or not isinstance(groups, int) or groups <= 0:
        raise RuntimeError(f"{op}: non-positive groups is not supported (groups={groups})")
    if any(s <= 0 for s in stride):
        raise RuntimeError(f"{op}: non-positive stride is not supported (stride={list(stride)})")
    if any(d <= 0 for d in dilation):
        raise RuntimeError(f"{op}: dilation should be greater than zero (dilation={list(dilation)})")
    if max(*stride, *dilation) > MAX_GEOMETRY:
        raise RuntimeError(f"{op}: stride and dilation must be at most {MAX_GEOMETRY}, got "
                           f"stride={list(stride)}, dilation={list(dilation)}")


def _check_has_channels(op, input):
    # an empty sum over no input channels: torch's conv2d answers with no output channels, its
    # transposed conv refuses, the kernels would answer with the bias; every backend refuses
    if input.shape[-3] == 0:
        raise RuntimeError(f"{op}: expected an input with at least one channel, got input of size "
                           f"{list(input.shape)}")


def _check_has_outputs(op, weight, k):
    # (as torch, which refuses them; the kernels would answer an empty tensor)
    if k == 0:
        raise RuntimeError(f"{op}: expected a weight with at least one output channel, got "
                           f"weight of size {list(weight.shape)}")


def _autocast(*tensors):
    """Under torch.autocast, cast like torch does for conv2d (a lower-precision op): floating
    tensors other than float64 go to the autocast dtype, so activations that autocast already made
    low-precision meet weights of the same dtype, on every backend (dilconv's ops are custom ops,
    which autocast itself leaves alone)."""
    ref = tensors[0]
    if not isinstance(ref, torch.Tensor):
        return tensors
    dev = ref.device.type
    if dev not in ("cpu", "cuda") or not torch.is_autocast_enabled(dev):
        return tensors
    dt = torch.get_autocast_dtype(dev)
    return tuple(t.to(dt) if isinstance(t, torch.Tensor) and t.is_floating_point()
                 and t.dtype != torch.float64 else t for t in tensors)


def _check_padding(op, padding):
    if any(p < 0 for p in padding):
        raise RuntimeError(f"{op}: negative padding is not supported (padding={list(padding)})")
    if any(p > MAX_GEOMETRY for p in padding):
        raise RuntimeError(f"{op}: padding must be at most {MAX_GEOMETRY}, got {list(padding)}")


def _check_bias(op, bias, k):
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != k):
        raise RuntimeError(
            f"{op}: expected bias to be 1-dimensional with {k} elements, but got bias of size "
            f"{list(bias.shape)}")


def _check_fits(op, hw, padding, kernel, dilation):
    padded = [hw[i] + 2 * padding[i] for i in range(2)]
    eff = [dilation[i] * (kernel[i] - 1) + 1 for i in range(2)]
    if padded[0] < eff[0] or padded[1] < eff[1]:
        raise RuntimeError(
            f"{op}: Calculated padded input size per channel: ({padded[0]} x {padded[1]}). "
            f"Kernel size: ({eff[0]} x {eff[1]}). Kernel size can't be greater than actual input size")


def _resolve_same(op, padding, stride, dilation, kernel):
    """padding: int/pair/'same'/'valid' -> (symmetric pair, extra right/bottom pad or None)."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0), None
        if padding != "same":
            raise RuntimeError(f"{op}: Invalid padding string: '{padding}'")
        if any(s != 1 for s in stride):
            raise RuntimeError(f"{op}: padding='same' is not supported for strided convolutions")
        total = [dilation[i] * (kernel[i] - 1) for i in range(2)]
        left = (total[0] // 2, total[1] // 2)
        extra = (total[0] - 2 * left[0], total[1] - 2 * left[1])
        # torch puts the odd pixel on the right/bottom; so do we.
        return left, (extra if any(extra) else None)
    return _pair("padding", padding), None


def _problem(op, input, weight, out_shape, stride, padding, dilation, groups, k, r, s, params,
             mid_channels=0):
    n, c, h, w = input.shape
    numel = 1
    for d in out_shape:
        numel *= d
    return _backends.Problem(
        op=op, device=input.device.type, dtype=input.dtype, n=n, c=c, h=h, w=w, k=k, r=r, s=s,
        stride=tuple(stride), padding=tuple(padding), dilation=tuple(dilation), groups=groups,
        channels_last=(input.dim() == 4 and not input.is_contiguous()
                       and input.is_contiguous(memory_format=torch.channels_last)),
        max_numel=max(input.numel(), weight.numel(), numel),
        requires_grad=torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in params),
        mid_channels=mid_channels,
    )


def _hashable(v):
    return tuple(v) if isinstance(v, list) else v


_is_compiling = torch.compiler.is_compiling
_any_autocast = torch._C._is_any_autocast_enabled  # any device type (torch >= 2.4)
_grad_enabled = torch.is_grad_enabled


def _auto_key(op, input, weight, bias, *conf):
    """The signature under which "auto"'s pick for this call is remembered, or None when it must
    not be (tracing, autocast, non-tensor arguments, unhashable arguments).

    Every call of "auto" pays for this, where torch would only run the convolution: it reads as
    few tensor attributes as identify the call (each is a call into C++, and Python right after
    a parallel region runs slowly while the pool's threads spin on the same cores)."""
    if (not isinstance(input, torch.Tensor) or not isinstance(weight, torch.Tensor)
            or _is_compiling() or _any_autocast()):
        return None
    grad = _grad_enabled() and (input.requires_grad or weight.requires_grad
                                or (bias is not None and bias.requires_grad))
    tensors = (op, input.shape, input.stride(), input.dtype, input.device, weight.shape,
               weight.stride(), weight.dtype, weight.device,
               None if bias is None else (bias.shape, bias.dtype, bias.device), grad)
    key = tensors + conf
    try:
        hash(key)
    except TypeError:  # list arguments (stride=[1, 1]): as tuples
        key = tensors + tuple(map(_hashable, conf))
        try:
            hash(key)
        except TypeError:
            return None
    return key


def _remember(key, b, call=None):
    """Remember "auto"'s pick for `key`: "torch", or (backend name, *normalised arguments) when
    `call` gives them (the call can then skip the checks it already passed)."""
    if key is not None:
        if len(_backends.AUTO_PICKS) > 4096:
            _backends.AUTO_PICKS.clear()
        _backends.AUTO_PICKS[key] = b.name if b.name == "torch" or call is None else (b.name, *call)


def _auto_pick(op, input, weight, bias, *conf) -> Optional[str]:
    """The backend name "auto" picked for a call of this signature, if one was made already."""
    key = _auto_key(op, input, weight, bias, *conf)
    hit = _backends.AUTO_PICKS.get(key) if key is not None else None
    return hit if hit is None or isinstance(hit, str) else hit[0]


def _batched(fn, input, *rest):
    if input.dim() == 3:
        return fn(input.unsqueeze(0), *rest).squeeze(0)
    return fn(input, *rest)


def conv2d(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
           stride: IntOr2 = 1, padding: Union[IntOr2, str] = 0, dilation: IntOr2 = 1,
           groups: int = 1, *, backend: Optional[str] = None) -> torch.Tensor:
    """`torch.nn.functional.conv2d` computed by a dilconv backend (dense, grouped, depthwise,
    dilated; any kernel size)."""
    return _conv2d(input, weight, bias, stride, padding, dilation, groups, backend, None)


def conv2d_clamp(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                 stride: IntOr2 = 1, padding: Union[IntOr2, str] = 0, dilation: IntOr2 = 1,
                 groups: int = 1, min: float = 0.0, max: float = float("inf"), *,
                 backend: Optional[str] = None) -> torch.Tensor:
    """`conv2d(...).clamp(min, max)`: ReLU with the defaults, ReLU6 with max=6 (gradient zero
    at the bounds, as torch's relu/hardtanh). The CPU kernels apply the clamp as they store each
    output (no second pass over the output); other backends run conv2d then clamp_."""
    if not (min <= max):
        raise RuntimeError(f"conv2d_clamp: need min <= max (not NaN), got min={min}, max={max}")
    return _conv2d(input, weight, bias, stride, padding, dilation, groups, backend,
                   (float(min), float(max)))


def _conv2d(input, weight, bias, stride, padding, dilation, groups, backend, clamp,
            decide_only=False):
    """decide_only: settle "auto"'s pick for this 4-D call (checks, policy, remembered) and return
    None without computing (DF._auto_pick then answers; see modules._onednn_fused)."""
    name = backend or _backends._current
    # a call of a signature that passed the checks before (under "auto": its pick; under a named
    # backend: that backend, keyed by the backend object, so that one put in its place is checked
    # afresh) skips them: they cost 35-50 us of Python a call, a sixth of a 0.3 ms layer
    key = None if name == "torch" else _auto_key(
        "conv2d" if name == "auto" else ("conv2d", _backends.get_backend(name)), input, weight,
        bias, stride, padding, dilation, groups)
    hit = _backends.AUTO_PICKS.get(key) if key is not None else None
    if decide_only and (hit is not None or key is None):
        return None
    if name == "torch" or hit == "torch":
        # torch checks its own arguments (same exceptions) and casts under autocast itself: the
        # checks below would only add Python time to every call (but for the one torch lacks)
        if name == "torch" and isinstance(input, torch.Tensor) and input.dim() in (3, 4):
            _check_has_channels("conv2d", input)
        if _backends.PICK_OBSERVERS:
            _backends.observe_pick("torch")
        y = F.conv2d(input, weight, bias, stride, padding, dilation, groups)
        return y if clamp is None else _backends._clamp_(y, *clamp)
    if hit is not None:  # a call of this signature passed the checks and went to hit[0]
        b, st, pd, dl, extra = _backends.get_backend(hit[0]), *hit[1:]
        if _backends.PICK_OBSERVERS:
            _backends.observe_pick(b.name)

        def run_again(x):
            if extra is not None:
                x = F.pad(x, [0, extra[1], 0, extra[0]])
            if clamp is not None:
                return b.conv2d_clamp(x, weight, bias, list(st), list(pd), list(dl), groups,
                                      *clamp)
            return b.conv2d(x, weight, bias, list(st), list(pd), list(dl), groups)

        return _batched(run_again, input)
    op = "conv2d"
    input, weight, bias = _autocast(input, weight, bias)
    stride, dilation = _pair("stride", stride), _pair("dilation", dilation)
    _check_common(op, input, weight, bias, stride, dilation, groups)
    kernel = tuple(weight.shape[2:])
    pad, extra = _resolve_same(op, padding, stride, dilation, kernel)
    _check_padding(op, pad)
    k, cg = weight.shape[0], weight.shape[1]
    c = input.shape[-3]
    _check_has_outputs(op, weight, k)
    if k % groups != 0:
        raise RuntimeError(
            f"Given groups={groups}, expected weight to be divisible by {groups} at dimension 0, "
            f"but got weight of size {list(weight.shape)} instead")
    if c != cg * groups:
        raise RuntimeError(
            f"Given groups={groups}, weight of size {list(weight.shape)}, expected input"
            f"{list(input.shape)} to have {cg * groups} channels, but got {c} channels instead")
    _check_bias(op, bias, k)
    hw = list(input.shape[-2:])
    if extra is not None:
        hw = [hw[0] + extra[0], hw[1] + extra[1]]
    _check_fits(op, hw, pad, kernel, dilation)

    def run(x):
        if extra is not None:
            x = F.pad(x, [0, extra[1], 0, extra[0]])
        out_shape = (x.shape[0], k, conv_out_size(x.shape[2], kernel[0], stride[0], pad[0], dilation[0]),
                     conv_out_size(x.shape[3], kernel[1], stride[1], pad[1], dilation[1]))
        p = _problem(op, x, weight, out_shape, stride, pad, dilation, groups, k, *kernel,
                     (x, weight, bias))
        b = (_backends._resolve if decide_only else _backends.resolve)(backend, p)
        _remember(key, b, (tuple(stride), tuple(pad), tuple(dilation), extra))
        if decide_only:
            return None
        if clamp is not None:
            return b.conv2d_clamp(x, weight, bias, list(stride), list(pad), list(dilation),
                                  groups, *clamp)
        return b.conv2d(x, weight, bias, list(stride), list(pad), list(dilation), groups)

    return _batched(run, input)


def conv_transpose2d(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                     stride: IntOr2 = 1, padding: IntOr2 = 0, output_padding: IntOr2 = 0,
                     groups: int = 1, dilation: IntOr2 = 1, *,
                     backend: Optional[str] = None) -> torch.Tensor:
    """`torch.nn.functional.conv_transpose2d` computed by a dilconv backend."""
    name = backend or _backends._current
    key = _auto_key("conv_transpose2d", input, weight, bias, stride, padding, output_padding,
                    groups, dilation) if name == "auto" else None
    if name == "torch" or (key is not None and _backends.AUTO_PICKS.get(key) == "torch"):
        if name == "torch" and isinstance(input, torch.Tensor) and input.dim() in (3, 4):
            _check_has_channels("conv_transpose2d", input)
        if _backends.PICK_OBSERVERS:
            _backends.observe_pick("torch")
        return F.conv_transpose2d(input, weight, bias, stride, padding, output_padding, groups, dilation)
    op = "conv_transpose2d"
    input, weight, bias = _autocast(input, weight, bias)
    stride, dilation = _pair("stride", stride), _pair("dilation", dilation)
    padding, output_padding = _pair("padding", padding), _pair("output_padding", output_padding)
    _check_common(op, input, weight, bias, stride, dilation, groups)
    _check_padding(op, padding)
    if any(o < 0 for o in output_padding):
        raise RuntimeError(f"{op}: negative output_padding is not supported")
    for i in range(2):
        if output_padding[i] >= stride[i] and output_padding[i] >= dilation[i]:
            raise RuntimeError(
                f"{op}: output padding must be smaller than either stride or dilation, but got "
                f"output_padding={list(output_padding)}, stride={list(stride)}, dilation={list(dilation)}")
    c = input.shape[-3]
    if weight.shape[0] != c:
        raise RuntimeError(
            f"Given transposed=1, weight of size {list(weight.shape)}, expected input "
            f"{list(input.shape)} to have {weight.shape[0]} channels, but got {c} channels instead")
    if c % groups != 0:
        raise RuntimeError(f"{op}: input channels ({c}) must be divisible by groups ({groups})")
    k = weight.shape[1] * groups
    _check_has_outputs(op, weight, k)
    _check_bias(op, bias, k)
    kernel = tuple(weight.shape[2:])
    hw = input.shape[-2:]
    if hw[0] < 1 or hw[1] < 1:  # (as torch)
        raise RuntimeError(f"{op}: expected a non-empty spatial input, got input of size "
                           f"{list(input.shape)}")
    out_hw = [conv_transpose_out_size(hw[i], kernel[i], stride[i], padding[i], output_padding[i],
                                      dilation[i]) for i in range(2)]
    if out_hw[0] <= 0 or out_hw[1] <= 0:
        raise RuntimeError(f"{op}: the output size {out_hw} is too small for input {list(input.shape)}")

    def run(x):
        p = _problem(op, x, weight, (x.shape[0], k, *out_hw), stride, padding, dilation, groups, k,
                     *kernel, (x, weight, bias))
        b = _backends.resolve(backend, p)
        _remember(key, b)
        return b.conv_transpose2d(x, weight, bias, list(stride), list(padding), list(output_padding),
                                  groups, list(dilation))

    return _batched(run, input)


def depthwise_separable_conv2d(input: torch.Tensor, dw_weight: torch.Tensor, pw_weight: torch.Tensor,
                               dw_bias: Optional[torch.Tensor] = None,
                               pw_bias: Optional[torch.Tensor] = None, stride: IntOr2 = 1,
                               padding: Union[IntOr2, str] = 0, dilation: IntOr2 = 1, *,
                               mid_relu: bool = False, out_relu: bool = False,
                               backend: Optional[str] = None,
                               _halves: Optional[tuple[Callable, Callable]] = None) -> torch.Tensor:
    """Depthwise (possibly dilated, channel multiplier dw_weight.shape[0] // C) then pointwise 1x1:
    `out = act(pw(act(dw(x) + dw_bias)) + pw_bias)`, where act is ReLU when asked. Backends that
    fuse it keep the depthwise tile on chip. A folded BatchNorm between the two convs is passed
    as a scaled dw_weight and shifted dw_bias (see DepthwiseSeparableConv2d).

    Where "auto" does not fuse a CPU separable conv it runs it as its two convs, each dispatched
    by "auto" on its own (the depthwise half is often dilconv's, the pointwise half oneDNN's)
    rather than as torch's pair. `_halves` (internal: DepthwiseSeparableConv2d's packed oneDNN
    calls) = (depthwise(x), pointwise(mid)) may compute those halves, each returning None where
    it does not apply."""
    op = "separable_conv2d"
    input, dw_weight, pw_weight, dw_bias, pw_bias = _autocast(input, dw_weight, pw_weight, dw_bias, pw_bias)
    stride, dilation = _pair("stride", stride), _pair("dilation", dilation)
    _check_common(op, input, dw_weight, dw_bias, stride, dilation, 1)
    if pw_weight.dim() != 4 or tuple(pw_weight.shape[2:]) != (1, 1):
        raise RuntimeError(f"{op}: pw_weight must be [K, C*M, 1, 1], got {list(pw_weight.shape)}")
    if pw_weight.dtype != dw_weight.dtype or pw_weight.device != dw_weight.device:
        raise RuntimeError(f"{op}: pw_weight must have dw_weight's dtype and device")
    c = input.shape[-3]
    cm = dw_weight.shape[0]
    if dw_weight.shape[1] != 1 or cm % c != 0:
        raise RuntimeError(
            f"{op}: dw_weight must be [C*M, 1, R, S] for C={c} input channels, got {list(dw_weight.shape)}")
    if pw_weight.shape[1] != cm:
        raise RuntimeError(
            f"{op}: pw_weight {list(pw_weight.shape)} must have {cm} input channels (dw_weight's outputs)")
    _check_bias(op, dw_bias, cm)
    _check_bias(op, pw_bias, pw_weight.shape[0])
    if pw_bias is not None and (pw_bias.dtype != pw_weight.dtype or pw_bias.device != pw_weight.device):
        raise RuntimeError(f"{op}: pw_bias must have pw_weight's dtype and device")
    kernel = tuple(dw_weight.shape[2:])
    pad, extra = _resolve_same(op, padding, stride, dilation, kernel)
    _check_padding(op, pad)
    hw = list(input.shape[-2:])
    if extra is not None:
        hw = [hw[0] + extra[0], hw[1] + extra[1]]
    _check_fits(op, hw, pad, kernel, dilation)
    k = pw_weight.shape[0]
    _check_has_outputs(op, pw_weight, k)

    def run(x):
        if extra is not None:
            x = F.pad(x, [0, extra[1], 0, extra[0]])
        out_shape = (x.shape[0], max(k, cm), conv_out_size(x.shape[2], kernel[0], stride[0], pad[0], dilation[0]),
                     conv_out_size(x.shape[3], kernel[1], stride[1], pad[1], dilation[1]))
        p = _problem(op, x, dw_weight, out_shape, stride, pad, dilation, c, k, *kernel,
                     (x, dw_weight, dw_bias, pw_weight, pw_bias), mid_channels=cm)
        b = _backends._resolve(backend, p)
        if b.name == "torch" and p.device == "cpu" and (backend or _backends._current) == "auto":
            return _separable_halves(x, dw_weight, pw_weight, dw_bias, pw_bias, stride, pad,
                                     dilation, c, mid_relu, out_relu, _halves)
        if _backends.PICK_OBSERVERS:
            _backends.observe_pick(b.name)
        return b.separable_conv2d(x, dw_weight, dw_bias, pw_weight, pw_bias, list(stride), list(pad),
                                  list(dilation), bool(mid_relu), bool(out_relu))

    return _batched(run, input)


def _separable_halves(x, dw_weight, pw_weight, dw_bias, pw_bias, stride, pad, dilation, c,
                      mid_relu, out_relu, halves):
    """The separable conv as two "auto" convs. On an AVX2 EPYC (DeepLabV3+'s decoder, 256 and
    304 channels at 129x129, inference) the depthwise half runs dilconv's kernel and the
    pointwise half oneDNN's, where torch's pair ran both on oneDNN. The arguments are passed as
    a module's conv passes them (pairs of ints), so that `halves` finds "auto"'s picks."""
    relu = (0.0, float("inf"))
    dw_fn, pw_fn = halves if halves is not None else (None, None)
    mid = dw_fn(x) if dw_fn is not None else None
    if mid is None:
        mid = _conv2d(x, dw_weight, dw_bias, tuple(stride), tuple(pad), tuple(dilation), c, "auto",
                      relu if mid_relu else None)
    y = pw_fn(mid) if pw_fn is not None else None
    if y is None:
        y = _conv2d(mid, pw_weight, pw_bias, (1, 1), (0, 0), (1, 1), 1, "auto",
                    relu if out_relu else None)
    return y


def resize_bilinear(input: torch.Tensor, size: Sequence[int], align_corners: bool = False, *,
                    backend: Optional[str] = None) -> torch.Tensor:
    """`F.interpolate(input, size=size, mode="bilinear", align_corners=align_corners)`, the
    upsampling of the segmentation networks. Under a dilconv backend a CPU tensor (float32/64,
    fp16/bf16 computed in float32) is resized by dilconv's kernel (`dilconv::resize_bilinear`:
    each input row blended along the width once, each output row one contiguous blend of two
    such rows, in NCHW and channels-last alike; its backward gathers per input row, no atomics)
    and keeps the input's memory format. Backend "torch", other devices and CPU autocast run
    F.interpolate."""
    size = tuple(size)
    if len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) for s in size):
        raise ValueError(f"resize_bilinear: size must be two ints (height, width), got {size}")
    if min(size) < 1:
        raise ValueError(f"resize_bilinear: size must be >= 1, got {size}")
    name = backend or _backends._current
    if name != "torch":
        _backends.get_backend(name)  # unknown name -> ValueError
    if (name == "torch" or not _ext.loaded or input.device.type != "cpu" or input.dim() != 4
            or input.dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16)
            or torch.is_autocast_enabled("cpu")):
        return F.interpolate(input, size=size, mode="bilinear", align_corners=align_corners)
    return torch.ops.dilconv.resize_bilinear(input, list(size), bool(align_corners))


def batch_norm_act(input: torch.Tensor, running_mean: Optional[torch.Tensor],
                   running_var: Optional[torch.Tensor], weight: Optional[torch.Tensor] = None,
                   bias: Optional[torch.Tensor] = None, momentum: float = 0.1, eps: float = 1e-5,
                   min: float = float("-inf"), max: float = float("inf"), *,
                   backend: Optional[str] = None) -> torch.Tensor:
    """Training-mode `F.batch_norm(input, running_mean, running_var, weight, bias, True, momentum,
    eps).clamp(min, max)`: normalised with the batch's statistics, the running statistics (if
    given) updated in place as torch does (unbiased variance). ReLU is min=0, ReLU6 min=0, max=6;
    the clamp's gradient is zero at the bounds, as torch's relu/hardtanh. Under a dilconv backend
    a CPU tensor (float32/64; fp16/bf16 computed in float32) runs `dilconv::batch_norm_act`: two
    passes over the tensor forward (statistics, normalise + clamp) and two backward, where torch
    runs batch_norm and the activation as separate passes. Backend "torch", other devices and
    CPU autocast run torch's ops."""
    if not (min <= max):
        raise RuntimeError(f"batch_norm_act: need min <= max (not NaN), got min={min}, max={max}")
    if input.dim() != 4:
        raise ValueError(f"batch_norm_act: expected a 4-D input (N, C, H, W), got {tuple(input.shape)}")
    if not eps > 0:  # as torch's (eps = 0 turns a constant channel into 0 / 0)
        raise ValueError(f"batch_norm eps must be positive during training, but got {eps}")
    c = input.shape[1]
    if input.numel() // (c if c > 0 else 1) <= 1:  # torch's message for the same case
        raise ValueError(f"Expected more than 1 value per channel when training, got input size "
                         f"{input.size()}")
    name = backend or _backends._current
    if name != "torch":
        _backends.get_backend(name)  # unknown name -> ValueError
    if (name == "torch" or not _ext.loaded or input.device.type != "cpu"
            or input.dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16)
            or torch.is_autocast_enabled("cpu")):
        y = F.batch_norm(input, running_mean, running_var, weight, bias, True, momentum, eps)
        return y if min == float("-inf") and max == float("inf") else _backends._clamp_(y, min, max)
    y, mean, _, var = torch.ops.dilconv.batch_norm_act(input, weight, bias, float(eps), float(min),
                                                       float(max))
    m = input.numel() // c
    with torch.no_grad():
        if running_mean is not None:
            running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
        if running_var is not None:
            running_var.mul_(1 - momentum).add_(var.to(running_var.dtype) * (m / (m - 1)),
                                                alpha=momentum)
    return y
