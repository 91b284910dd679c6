"""The network suite: each network of dilconv.models end to end, inference and a training step,
every backend against torch. One model serves all backends (its convs follow
`dilconv.use_backend`, so the weights are identical); the "torch" row runs the same dilconv
modules on backend "torch" (torch.nn.functional behind dilconv's argument checks). A training
step's loss is dilconv.losses.cross_entropy, which follows the backend the same way (torch's
F.cross_entropy under "torch"); where the model has `resize_output` (DeepLab, FCN) the loss takes
the logits before the final upsampling and upsamples them itself (F.interpolate under "torch")."""
from __future__ import annotations

import contextlib
import copy
import gc
import importlib

import torch

import dilconv
from dilconv import losses, registry
from dilconv.bench import ops
from dilconv.bench.suite import DTYPES
from dilconv.bench.timing import measure, paired_speedup

# (name, builder in dilconv.models, kwargs, input side, in --quick, input channels)
NETWORKS = [
    ("deeplabv3plus_mobilenetv2", "deeplabv3plus", {"backbone": "mobilenet_v2"}, 513, True, 3),
    ("deeplabv3plus_xception65", "deeplabv3plus", {"backbone": "xception65"}, 513, False, 3),
    ("deeplabv3plus_resnet101", "deeplabv3plus", {"backbone": "resnet101"}, 513, False, 3),
    ("deeplabv3plus_resnext50", "deeplabv3plus", {"backbone": "resnext50_32x4d"}, 513, False, 3),
    ("deeplabv3_resnet101", "deeplabv3", {"backbone": "resnet101"}, 513, False, 3),
    ("deeplabv3_resnet50_tv", "deeplabv3_resnet50", {}, 513, False, 3),
    ("deeplabv2_resnet101", "deeplabv2", {}, 513, False, 3),
    ("fcn_resnet50_tv", "fcn_resnet50", {}, 513, False, 3),
    ("fcn8s", "fcn8s", {}, 500, False, 3),
    ("fcn16s", "fcn16s", {}, 500, False, 3),
    ("fcn32s", "fcn32s", {}, 500, False, 3),
    ("dilatednet_large", "dilatednet", {"context": "large"}, 513, False, 3),
    ("pspnet_resnet50", "pspnet", {"backbone": "resnet50"}, 473, False, 3),
    ("unet", "unet", {}, 572, False, 1),
    ("hypercolumns_alexnet", "hypercolumns", {}, 513, False, 3),
    ("multigrid", "multigrid", {}, 64, False, 3),
    ("progressive_multigrid", "progressive_multigrid", {}, 64, False, 3),
]
# variants of listed networks (same layers, other depth/width)
VARIANTS = {"deeplabv3_resnet101", "fcn_resnet101"}


def plan(names: str | None, quick: bool, size: int | None, dtypes=("fp32",),
         layouts=("nchw", "nhwc"), device: str = "cpu") -> list[dict]:
    want = [n.strip() for n in names.split(",")] if names else None
    out = []
    for name, builder, kw, side, q, in_ch in NETWORKS:
        if (want and not any(w in name for w in want)) or (quick and not want and not q):
            continue
        s = size or (97 if quick else side)
        for dt in dtypes:
            for lay in (layouts[:1] if quick else layouts):  # --quick: the first layout only
                for mode, n in (("inference", 1), ("train step", 2 if device == "cpu" else 8)):
                    out.append({"id": f"{name}/{s}/{dt}/{lay}/{mode}", "network": name,
                                "builder": builder, "kwargs": kw, "input": f"{n}x{in_ch}x{s}x{s}",
                                "in_ch": in_ch,
                                "n": n, "size": s, "dtype": dt, "layout": lay, "mode": mode})
    return out


def uncovered() -> list[str]:
    """Networks dilconv.models offers (its MODELS table) that the suite does not run."""
    try:
        models = importlib.import_module("dilconv.models")
    except ImportError:
        return []
    known = {b for _, b, *_ in NETWORKS} | VARIANTS
    return [n for n in getattr(models, "MODELS", {}) if n not in known]


def _build(net: dict):
    try:
        models = importlib.import_module("dilconv.models")
    except ImportError as e:
        return None, f"dilconv.models is not available ({e})"
    builder = getattr(models, net["builder"], None)
    if builder is None:
        return None, f"dilconv.models has no builder {net['builder']!r} (yet)"
    try:
        torch.manual_seed(0)
        return builder(**net["kwargs"]), None
    except (TypeError, ValueError, NotImplementedError) as e:
        return None, f"{net['builder']}(**{net['kwargs']}) failed: {e}"


@contextlib.contextmanager
def _using(name):
    """dilconv.use_backend(name); "auto" set directly (registry.get_backend("auto") raises
    KeyError in this version, so use_backend("auto") cannot be used)."""
    if name != "auto":
        with dilconv.use_backend(name):
            yield
        return
    prev, registry._current = registry._current, "auto"
    try:
        yield
    finally:
        registry._current = prev


def _out(y):
    return y["out"] if isinstance(y, dict) else y


def _no_dropout(model):
    # dropout masks differ between runs, which would make the check against the float64
    # reference meaningless; their cost is negligible
    for m in model.modules():
        if isinstance(m, torch.nn.modules.dropout._DropoutNd):
            m.eval()


def _error(outs, ref) -> float:
    """Inference: max|out - ref| / max|ref|. Training step [loss, *grads]: the loss's relative
    error, and the largest gradient error over all parameters relative to the largest gradient
    (per-tensor scales are meaningless for gradients that are zero up to cancellation, e.g. a
    conv bias before BatchNorm or a branch normalised over a 1x1 map)."""
    def err(o, r):
        return (o.detach().to(r.device, torch.float64) - r).abs().max().item()
    if len(ref) == 1:
        return err(outs[0], ref[0]) / max(ref[0].abs().max().item(), 1e-30)
    loss = err(outs[0], ref[0]) / max(ref[0].abs().max().item(), 1e-30)
    scale = max(r.abs().max().item() for r in ref[1:])
    return max(loss, max(err(o, r) for o, r in zip(outs[1:], ref[1:])) / max(scale, 1e-30))


def run_network(net: dict, device: str, backends: list[str], timer, budget_s: float,
                min_reps: int = 5, breakdown: bool = False) -> dict:
    res = {k: net[k] for k in ("id", "network", "input", "dtype", "layout", "mode")}
    res["results"] = {}
    model, why = _build(net)
    if model is None:
        res["skipped"] = why
        return res
    dtype = DTYPES[net["dtype"]]
    fmt = torch.channels_last if net["layout"] == "nhwc" else torch.contiguous_format
    train = net["mode"] == "train step"
    g = torch.Generator().manual_seed(0)
    x64 = torch.randn(net["n"], net.get("in_ch", 3), net["size"], net["size"], generator=g,
                      dtype=torch.float64)
    x64 = x64.to(dtype).double()
    model.train(train)
    _no_dropout(model)
    # a training step's loss upsamples the logits itself where the model can hand them over
    # before its final resize (the same ops under "torch": F.interpolate, F.cross_entropy)
    upsample = "bilinear" if train and hasattr(model, "resize_output") else None
    if upsample:
        model.resize_output = False

    def loss_of(y, target):
        return losses.cross_entropy(y.float(), target, upsample=upsample)

    def step(m, x, target):
        y = _out(m(x))
        if not train:
            return [y]
        loss = loss_of(y, target)
        grads = torch.autograd.grad(loss, [p for p in m.parameters() if p.requires_grad])
        return [loss.detach(), *grads]

    ref_model = copy.deepcopy(model).to(device, torch.float64)
    with dilconv.use_backend("torch"), ops.fast_float64_torch():
        with torch.no_grad():
            y = _out(ref_model(x64.to(device)))
        hw = x64.shape[2:] if upsample else y.shape[2:]  # (a U-Net's output is smaller)
        target = torch.randint(0, y.shape[1], (y.shape[0], *hw), generator=g).to(device)
        with torch.set_grad_enabled(train):
            ref = [t.detach() for t in step(ref_model, x64.to(device), target)] if train else [y]
    del ref_model, y
    model = model.to(device, dtype).to(memory_format=fmt)
    x = x64.to(device, dtype).contiguous(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=1e-6, momentum=0.9) if train else None

    def make(backend):
        def fn(i):
            with _using(backend):
                if not train:
                    with torch.no_grad():
                        return [_out(model(x))]
                opt.zero_grad(set_to_none=True)
                loss = loss_of(_out(model(x)), target)
                loss.backward()
                opt.step()
                return loss
        return fn

    fns = {}
    base_err = None
    for b in ["torch", *backends]:
        r = res["results"][b] = {}
        try:
            with _using(b), torch.set_grad_enabled(train):
                if not train:  # a first call settles per-call caches ("auto"'s picks, packed
                    step(model, x, target)  # weights): the checked call runs the timed paths
            with ops.record_resolution() as seen, _using(b), torch.set_grad_enabled(train):
                outs = step(model, x, target)  # checked on a step without the optimizer update
        except NotImplementedError as e:
            r.update(status="n/a", reason=str(e).splitlines()[0])
            continue
        except Exception as e:
            r.update(status="ERROR", reason=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            continue
        err = _error(outs, ref)
        # deep networks amplify rounding: torch's own error sets the scale (a backend may be up to
        # 8x less accurate than torch). torch itself gets a sanity bound: inference is well
        # conditioned (1e-3 in fp32); training-step gradients are not (BatchNorm's backward
        # cancels most of a weight gradient: torch's fp32 gradients of early layers are ~1e-2 off
        # float64 at random init), so there the bound only catches a broken pipeline (1e-1).
        if b == "torch":
            base_err = err
            tol = 1e-1 if train or dtype != torch.float32 else 1e-3
        else:
            tol = max(ops.BASE_TOL[dtype], 8 * (base_err or 0.0))
        r.update(error=err, tol=tol, status="ok" if err <= tol else "FAIL",
                 paths={k: seen.count(k) for k in set(seen)})
        del outs
        if r["status"] == "ok":
            fns[b] = make(b)
    if fns:
        timed = measure(fns, timer, budget_s=budget_s, min_reps=min_reps)
        base = timed.get("torch")
        for b, (st, samples) in timed.items():
            res["results"][b]["time"] = vars(st)
            if base is not None and b != "torch":
                res["results"][b]["speedup"] = vars(paired_speedup(base[1], samples))
        if breakdown:
            from dilconv.bench import breakdown as bd
        if breakdown and device == "cpu":  # a GPU op's host time is its launch
            res["in_network"] = bd.in_network(fns)
        if breakdown and base is not None:
            # the calls of one pass under torch (the same calls every backend makes)
            with bd.record_calls() as calls, _using("torch"), torch.set_grad_enabled(train):
                step(model, x, target)
            conv_backends = ["torch", *[b for b in backends if b in fns]]
            times, counts = bd.time_calls(calls, conv_backends, train, timer, budget_s / 4)
            res["breakdown"] = bd.summarise(times, counts, base[0].median, conv_backends)
    del model, fns, opt
    gc.collect()
    return res
