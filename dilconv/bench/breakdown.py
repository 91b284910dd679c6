"""Where a network's time goes (`python -m dilconv bench --networks NAME --breakdown`).

One pass of the network is run with dilconv's functional entry points wrapped, recording every
convolution it makes (op, shapes, memory format, arguments). Each distinct call is then timed in
isolation, interleaved per backend exactly like the op suite (forward for inference, forward +
backward for a training step). With the network's own time under torch this gives:

  conv share     the convolutions' part of torch's network time
  best convs     every convolution on its fastest backend (an oracle "auto")
  bound          network time / (network time - torch convs + best convs): the most any
                 choice of convolution backends can gain (Amdahl), the rest of the network
                 (normalisation, activations, upsampling, loss, optimizer) staying as it is

Isolated timings leave out what the network adds around a layer (a cold cache after another
layer, the allocator), so the sums are estimates; the network rows of the report are the
measurements. `in_network` measures inside the network instead: every op of a few steps timed
where it runs (a TorchDispatchMode around each aten/dilconv op, below autograd), summed by
category (1x1 / depthwise / other convolutions, forward and backward, batch norm, resize, loss,
the rest), per backend. On the CPU only: a GPU op's host time is its launch."""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import dilconv.functional as DF
from dilconv._ops import output_memory_format
from dilconv.bench.timing import measure

_ENTRY_POINTS = ("conv2d", "conv_transpose2d", "depthwise_separable_conv2d")


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    shape: tuple
    dtype: torch.dtype
    channels_last: bool
    requires_grad: bool


@dataclasses.dataclass(frozen=True)
class Call:
    fn: str
    args: tuple  # TensorSpec for tensors, the value otherwise
    kwargs: tuple  # sorted (name, value) pairs, backend removed

    def describe(self) -> str:
        t = [a for a in self.args if isinstance(a, TensorSpec)]
        x, w = t[0], t[1]
        lay = "nhwc" if x.channels_last else "nchw"
        dims = lambda t: "x".join(str(v) for v in t.shape)  # noqa: E731
        return f"{self.fn} in={dims(x)} w={dims(w)} {lay}"


def _spec(v):
    if isinstance(v, torch.Tensor):
        cl = v.dim() == 4 and not v.is_contiguous() and v.is_contiguous(memory_format=torch.channels_last)
        return TensorSpec(tuple(v.shape), v.dtype, cl, v.requires_grad)
    return v


@contextlib.contextmanager
def record_calls():
    """Every call of dilconv's functional convolutions made inside the block."""
    calls: list[Call] = []
    originals = {name: getattr(DF, name) for name in _ENTRY_POINTS}

    def wrap(name, fn):
        def spy(*args, **kwargs):
            kw = tuple(sorted((k, _spec(v)) for k, v in kwargs.items() if k != "backend"))
            calls.append(Call(name, tuple(_spec(a) for a in args), kw))
            return fn(*args, **kwargs)
        return spy

    for name, fn in originals.items():
        setattr(DF, name, wrap(name, fn))
    try:
        yield calls
    finally:
        for name, fn in originals.items():
            setattr(DF, name, fn)


def _materialise(call: Call, train: bool, gen: torch.Generator):
    def make(v):
        if not isinstance(v, TensorSpec):
            return v
        t = torch.randn(v.shape, generator=gen, dtype=torch.float32).to(v.dtype)
        if v.channels_last:
            t = t.contiguous(memory_format=torch.channels_last)
        return t.requires_grad_(train and v.requires_grad)

    args = [make(a) for a in call.args]
    kwargs = {k: make(v) for k, v in call.kwargs}
    leaves = [t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor) and t.requires_grad]
    return args, kwargs, leaves


def time_calls(calls: list[Call], backends: list[str], train: bool, timer, budget_s: float):
    """{call: {backend: median seconds}} and the number of times each call occurs."""
    counts = collections.Counter(calls)
    gen = torch.Generator().manual_seed(0)
    out = {}
    for call in counts:
        args, kwargs, leaves = _materialise(call, train, gen)
        fn = getattr(DF, call.fn)
        gy = None
        if train and leaves:
            with torch.no_grad():
                y = fn(*args, **kwargs, backend="torch")
            gy = torch.randn(y.shape, generator=gen).to(y.dtype).contiguous(
                memory_format=output_memory_format(y))

        def make(b):
            def run(i):
                if gy is None:
                    with torch.no_grad():
                        return fn(*args, **kwargs, backend=b)
                y = fn(*args, **kwargs, backend=b)
                return torch.autograd.grad(y, leaves, gy)
            return run

        fns = {}
        for b in backends:
            try:
                make(b)(0)
            except (NotImplementedError, RuntimeError):
                continue
            fns[b] = make(b)
        timed = measure(fns, timer, budget_s=budget_s, min_reps=3)
        out[call] = {b: st.median for b, (st, _) in timed.items()}
    return out, counts


def summarise(times, counts, network_s: float, backends: list[str]) -> dict:
    """Sums per backend, the oracle's sum, the conv share of torch's network time and the Amdahl
    bound; plus the calls where the backends differ most."""
    sums = {b: 0.0 for b in backends}
    best = 0.0
    rows = []
    for call, t in times.items():
        n = counts[call]
        for b in backends:
            sums[b] += n * t.get(b, t["torch"])
        fastest = min(t, key=t.get)
        best += n * t[fastest]
        rows.append({"call": call.describe(), "count": n,
                     "ms": {b: round(v * 1e3, 3) for b, v in t.items()}, "fastest": fastest})
    conv_torch = sums["torch"]
    rest = max(network_s - conv_torch, 0.0)
    rows.sort(key=lambda r: -r["count"] * r["ms"]["torch"])
    return {
        "network_torch_ms": network_s * 1e3,
        "conv_ms": {b: v * 1e3 for b, v in sums.items()},
        "conv_best_ms": best * 1e3,
        "conv_share": conv_torch / network_s if network_s else 0.0,
        "bound": network_s / (rest + best) if rest + best else 0.0,
        "bound_if_convs_free": network_s / rest if rest else float("inf"),
        "calls": rows,
    }


def markdown(net_id: str, mode: str, s: dict) -> list[str]:
    b = [k for k in s["conv_ms"] if k != "torch"]
    lines = [f"### {net_id} ({mode}): where the time goes", "",
             f"Network under torch: {s['network_torch_ms']:.1f} ms; its convolutions timed in "
             f"isolation: torch {s['conv_ms']['torch']:.1f} ms "
             f"({100 * s['conv_share']:.0f}% of the network)"
             + "".join(f", {k} {s['conv_ms'][k]:.1f} ms" for k in b)
             + f", fastest per call {s['conv_best_ms']:.1f} ms. Bound on the network speed-up from "
             f"the convolutions alone: {s['bound']:.2f}× with these kernels, "
             f"{s['bound_if_convs_free']:.2f}× if they took no time (Amdahl).", "",
             "| call | count | " + " | ".join(f"{k} ms" for k in ["torch", *b]) + " | fastest |",
             "|---|---|" + "---|" * (len(b) + 1) + "---|"]
    for r in s["calls"][:25]:
        lines.append(f"| {r['call']} | {r['count']} | "
                     + " | ".join(str(r["ms"].get(k, "–")) for k in ["torch", *b])
                     + f" | {r['fastest']} |")
    return lines + [""]


# ------------------------------------------------------------------------------------------
# in the network: every op of a step timed where it runs

CATEGORIES = ("1x1 conv fwd", "1x1 conv bwd", "depthwise conv fwd", "depthwise conv bwd",
              "separable conv fwd", "separable conv bwd", "other conv fwd", "other conv bwd",
              "batch norm fwd", "batch norm bwd", "activation", "resize fwd", "resize bwd", "loss",
              "other ops")
_ACTIVATIONS = {"relu", "hardtanh", "clamp", "clamp_min", "clamp_max", "threshold_backward",
                "hardtanh_backward", "leaky_relu", "leaky_relu_backward", "sigmoid", "gelu"}


def _conv_weight_shape(base: str, args) -> tuple | None:
    # the weight (or the weight gradient's size) is the 2nd argument of the forward ops and
    # conv2d_input_grad, the 3rd of the backward ops and conv2d_weight_grad
    idx = 2 if base.endswith("backward") or base == "conv2d_weight_grad" else 1
    w = args[idx] if len(args) > idx else None
    if isinstance(w, torch.Tensor) and w.dim() == 4:
        return tuple(w.shape)
    if isinstance(w, (list, tuple)) and len(w) == 4:
        return tuple(int(v) for v in w)
    return None


def categorise(func, args) -> str:
    """The category of one op as a TorchDispatchMode sees it (aten.*, dilconv.*, mkldnn.*)."""
    base = str(func).split(".")[1]
    bwd = "backward" in base or base.endswith("_grad")
    d = " bwd" if bwd else " fwd"
    if "conv" in base:
        if "separable" in base:
            return "separable conv" + d
        shape = _conv_weight_shape(base, args)
        transposed = "transpose" in base or (base == "convolution" and len(args) > 6 and args[6] is True)
        if shape is None or transposed:
            return "other conv" + d
        if shape[2] * shape[3] == 1:
            return "1x1 conv" + d
        return ("depthwise conv" if shape[1] == 1 else "other conv") + d
    if "batch_norm" in base:
        return "batch norm" + d
    if base.rstrip("_") in _ACTIVATIONS:
        return "activation"
    if "softmax" in base or "nll_loss" in base or "cross_entropy" in base:
        return "loss"  # (resize_cross_entropy too: the loss that upsamples its logits)
    if "upsample" in base or "resize" in base:
        return "resize" + d
    return "other ops"


class _OpTimer(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.seconds = collections.Counter()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        t0 = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        self.seconds[categorise(func, args)] += time.perf_counter() - t0
        self.ops += 1
        return out


def in_network(fns: dict, reps: int = 3) -> dict:
    """Per backend: ms per step by category (CATEGORIES order), the ops' sum, the number of ops a
    step and the step's time under the timer. fns: backend -> fn(i) running one step
    (after one untimed step, so per-call caches are settled)."""
    out = {}
    for b, fn in fns.items():
        fn(0)
        timer, steps = _OpTimer(), []
        for i in range(reps):
            t0 = time.perf_counter()
            with timer:
                fn(i)
            steps.append(time.perf_counter() - t0)
        ms = {c: timer.seconds[c] / reps * 1e3 for c in CATEGORIES if timer.seconds[c]}
        out[b] = {"ms": ms, "ops_ms": sum(ms.values()), "ops_per_step": timer.ops // reps,
                  "step_ms": sum(steps) / reps * 1e3}
    return out


def markdown_in_network(net_id: str, mode: str, d: dict, network_ms: dict) -> list[str]:
    """network_ms: backend -> the network row's median (timed without the op timer)."""
    b = list(d)
    lines = [f"### {net_id} ({mode}): time by op category, in the network", "",
             "| op category | " + " | ".join(f"{k} ms" for k in b) + " |",
             "|---|" + "---|" * len(b)]
    for c in CATEGORIES:
        if any(c in d[k]["ms"] for k in b):
            lines.append(f"| {c} | " + " | ".join(f"{d[k]['ms'].get(c, 0.0):.1f}" for k in b) + " |")
    lines.append("| all ops | " + " | ".join(f"{d[k]['ops_ms']:.1f}" for k in b) + " |")
    lines.append("| step under the op timer | " + " | ".join(f"{d[k]['step_ms']:.1f}" for k in b) + " |")
    lines.append("| step without it (network row) | "
                 + " | ".join(f"{network_ms[k]:.1f}" if k in network_ms else "–" for k in b) + " |")
    lines.append("| ops a step | " + " | ".join(str(d[k]["ops_per_step"]) for k in b) + " |")
    return lines + [""]
