"""`python -m dilconv train` and `python -m dilconv eval`: segmentation training and evaluation.

    python -m dilconv train --model deeplabv3plus --backbone mobilenet_v2 --data voc:/data/VOCdevkit \\
        --crop-size 513 --batch-size 16 --steps 30000 --lr 0.007 --out runs/voc
    torchrun --nproc-per-node 4 -m dilconv train ...            # DistributedDataParallel
    python -m dilconv eval --model deeplabv3plus --backbone mobilenet_v2 --data voc:/data/VOCdevkit \\
        --weights runs/voc/model.pt

Every convolution of the dilconv models goes through the backend chosen by --backend.
Files written to --out: checkpoint.pt (training state: model, optimizer, scaler, step, RNG; plain
tensors and numbers, loadable with torch.load(weights_only=True)), model.pt (the model's
state_dict alone), log.jsonl (one line per step and per evaluation), metrics.json (last evaluation).
"""
from __future__ import annotations

import ast
import contextlib
import inspect
import json
import math
import os
import sys
import time
from collections import OrderedDict
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler, Sampler

import dilconv
from dilconv import losses, metrics
from dilconv.data import build_dataset, pad_collate, parse_data_spec

DEFAULT_CROP = {"synthetic": 128, "voc": 513, "cityscapes": 768}


# ------------------------------------------------------------------------------------------------
# a small model of our own, for smoke tests and the distributed test (no BatchNorm: with it the
# per-process batch statistics would make 2 x B differ from 1 x 2B)

class TinyAtrousNet(nn.Module):
    """Stride-4 stem, an atrous block (dilations 2 and 4, one separable), a 1x1 classifier,
    bilinear upsampling to the input size. `aux_loss` adds an auxiliary head on the stem."""

    def __init__(self, num_classes: int = 21, width: int = 16, aux_loss: bool = False,
                 backend: Optional[str] = None):
        super().__init__()
        w = width
        self.stem = nn.Sequential(
            dilconv.AtrousConv2d(3, w, 3, stride=2, padding=1, backend=backend), nn.ReLU(),
            dilconv.AtrousConv2d(w, w, 3, stride=2, padding=1, backend=backend), nn.ReLU())
        self.block = nn.Sequential(
            dilconv.AtrousConv2d(w, w, 3, padding=2, dilation=2, backend=backend), nn.ReLU(),
            dilconv.DepthwiseSeparableConv2d(w, w, 3, padding=4, dilation=4, mid_relu=True,
                                             backend=backend), nn.ReLU())
        self.classifier = dilconv.AtrousConv2d(w, num_classes, 1, backend=backend)
        self.aux = dilconv.AtrousConv2d(w, num_classes, 1, backend=backend) if aux_loss else None

    def forward(self, x):
        size = x.shape[-2:]
        f = self.stem(x)
        out = OrderedDict(out=F.interpolate(self.classifier(self.block(f)), size=size,
                                            mode="bilinear", align_corners=False))
        if self.aux is not None:
            out["aux"] = F.interpolate(self.aux(f), size=size, mode="bilinear", align_corners=False)
        return out


def _parse_model_args(items) -> dict:
    kw = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"--model-arg expects KEY=VALUE, got {item!r}")
        try:
            kw[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            kw[key] = value  # a bare string
    return kw


def build_model(name: str, num_classes: int, backbone: Optional[str] = None,
                output_stride: Optional[int] = None, aux_loss: bool = False,
                extra: Optional[dict] = None) -> nn.Module:
    """`name` is "tiny" or a builder of dilconv.models (deeplabv3plus, fcn8s, ...). Options the
    builder does not take raise instead of being dropped silently."""
    kw = dict(extra or {})
    if name == "tiny":
        if backbone is not None or output_stride is not None:
            raise ValueError("--model tiny takes no --backbone/--output-stride")
        return TinyAtrousNet(num_classes, aux_loss=aux_loss, **kw)
    try:
        import dilconv.models as zoo
    except ImportError as e:
        raise RuntimeError(f"dilconv.models is not available ({e}); --model tiny works without it") from e
    builder = zoo.MODELS.get(name)
    if builder is None:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(zoo.MODELS)} or 'tiny'")
    kw["num_classes"] = num_classes
    if backbone is not None:
        kw["backbone"] = backbone
    if output_stride is not None:
        kw["output_stride"] = output_stride
    if aux_loss:
        kw["aux_loss"] = True
    params = inspect.signature(builder).parameters
    if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        bad = [k for k in kw if k not in params]
        if bad:
            raise ValueError(f"dilconv.models.{name} does not take {', '.join(bad)} "
                             f"(it takes {', '.join(params)})")
    return builder(**kw)


def _outputs(result) -> "OrderedDict[str, torch.Tensor]":
    if isinstance(result, torch.Tensor):
        return OrderedDict(out=result)
    return result


def _upcast(t: torch.Tensor) -> torch.Tensor:
    # losses of fp16/bf16 (autocast) logits are computed in fp32; fp64 stays fp64
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def align_target(logits: torch.Tensor, target: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """The target for an output of a different size: valid-convolution networks (the classic U-Net)
    predict a centred window of their input, so the target is cropped to it."""
    oh, ow = logits.shape[-2:]
    th, tw = target.shape[-2:]
    if (oh, ow) == (th, tw):
        return target
    if oh > th or ow > tw:
        raise ValueError(f"model output {oh}x{ow} is larger than its input {th}x{tw}")
    top, left = (th - oh) // 2, (tw - ow) // 2
    return target[..., top:top + oh, left:left + ow]


# ------------------------------------------------------------------------------------------------
# process setup

class Env:
    def __init__(self, args):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        want = args.device
        if want == "auto":
            want = "cuda" if torch.cuda.is_available() else "cpu"
        if want.startswith("cuda"):
            if not torch.cuda.is_available():
                raise RuntimeError("--device cuda: no CUDA device is visible")
            self.device = torch.device("cuda", self.local_rank if want == "cuda" else
                                       torch.device(want).index)
            torch.cuda.set_device(self.device)
        elif want == "cpu":
            self.device = torch.device("cpu")
        else:
            raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {args.device!r}")
        self.distributed = self.world > 1
        if self.distributed and not dist.is_initialized():
            backend = args.dist_backend or ("nccl" if self.device.type == "cuda" else "gloo")
            dist.init_process_group(backend)
            self.rank, self.world = dist.get_rank(), dist.get_world_size()
        if self.distributed and self.device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
            local = int(os.environ.get("LOCAL_WORLD_SIZE", self.world))
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def close(self, finished: bool = False):
        if self.distributed and dist.is_initialized():
            if finished:
                # every rank reaches here before any tears the group down: a rank destroying it
                # while another is still in its last collective aborts in gloo's threads
                dist.barrier()
            dist.destroy_process_group()


def amp_dtype(mode: str, device: torch.device) -> Optional[torch.dtype]:
    """None = full precision. auto: CUDA bf16 where supported, else fp16; CPU: off."""
    if mode == "off":
        return None
    if device.type == "cuda":
        if mode == "auto":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            why = autocast_unsupported(device, dtype)
            if why:
                print(f"--amp auto: training in fp32: dilconv convolutions reject autocast here ({why})",
                      file=sys.stderr)
                return None
            return dtype
        if mode == "bf16" and not torch.cuda.is_bf16_supported():
            raise RuntimeError("--amp bf16: this GPU does not support bfloat16")
        return {"fp16": torch.float16, "bf16": torch.bfloat16}[mode]
    if mode == "auto":
        return None
    if mode == "fp16":
        raise RuntimeError("--amp fp16 is for CUDA; on the CPU use --amp bf16")
    return torch.bfloat16


def autocast_unsupported(device: torch.device, dtype: torch.dtype) -> Optional[str]:
    """Why dilconv's convolutions fail under autocast on `device` (None when they work): in a
    network, torch ops return low-precision activations that then meet fp32 conv weights."""
    try:
        with torch.autocast(device_type=device.type, dtype=dtype):
            x = torch.randn(1, 2, 4, 4, device=device)
            w = torch.randn(2, 2, 3, 3, device=device)
            low = F.conv2d(x, w, padding=1)  # autocast: low precision
            dilconv.functional.conv2d(low, w, padding=1)
        return None
    except (RuntimeError, NotImplementedError) as e:
        return str(e).splitlines()[0]


def _autocast(device: torch.device, dtype: Optional[torch.dtype]):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# ------------------------------------------------------------------------------------------------
# samplers

class _Skip(Sampler):
    """The first `skip` indices of `sampler` left out: a resumed run continues the epoch it
    stopped in with exactly the samples it had not seen."""

    def __init__(self, sampler, skip: int):
        self.sampler, self.skip = sampler, skip

    def __iter__(self):
        it = iter(self.sampler)
        for _ in range(self.skip):
            next(it, None)
        return it

    def __len__(self):
        return max(0, len(self.sampler) - self.skip)


class _Shard(Sampler):
    """Evaluation: rank r takes samples r, r + world, ... with no padding, so the all-reduced
    confusion matrix counts every sample exactly once."""

    def __init__(self, n: int, rank: int, world: int):
        self.idx = list(range(rank, n, world))

    def __iter__(self):
        return iter(self.idx)

    def __len__(self):
        return len(self.idx)


def _generator(seed: int, epoch: int) -> torch.Generator:
    # DataLoader otherwise draws its workers' base seed from the global RNG, so creating a loader
    # (e.g. on resume, or for an evaluation) would shift the model's dropout stream
    from dilconv.data import sample_generator

    return sample_generator(seed, epoch & 0xFFFFFFFF, 0x7FFFFFFF)


def poly_lr(base: float, step: int, total: int, power: float = 0.9) -> float:
    return base * (1 - min(step, total) / total) ** power


# ------------------------------------------------------------------------------------------------
# evaluation

@torch.no_grad()
def evaluate(model: nn.Module, loader, num_classes: int, device: torch.device,
             dtype: Optional[torch.dtype] = None, ignore_index: int = 255,
             progress: bool = False, channels_last: bool = False) -> dict:
    """mIoU, pixel accuracy, per-class IoU over `loader` (all ranks' confusion matrices summed)."""
    was_training = model.training
    model.eval()
    cm = metrics.ConfusionMatrix(num_classes, ignore_index, device=device)
    bar = _bar(len(loader), "eval", progress)
    for images, target in loader:
        images = images.to(device, next(model.parameters()).dtype, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        target = target.to(device, non_blocking=True)
        with _autocast(device, dtype):
            out = _outputs(model(images))["out"]
        cm.update(out.argmax(1), align_target(out, target, ignore_index))
        bar.update(1)
    bar.close()
    cm.all_reduce()
    model.train(was_training)
    return cm.compute()


def _bar(total, desc, enabled, initial=0):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, dynamic_ncols=True,
                file=sys.stderr, leave=False)


# ------------------------------------------------------------------------------------------------
# checkpoints

def _primitive_args(args) -> dict:
    keep = {}
    for k, v in vars(args).items():
        if k.startswith("_"):
            continue
        if isinstance(v, (str, int, float, bool, type(None))) or (
                isinstance(v, list) and all(isinstance(x, (str, int, float)) for x in v)):
            keep[k] = v
    return keep


def _save(obj, path):
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)  # never a half-written checkpoint


def load_weights(path: str) -> dict:
    """A model state_dict from `path`: a bare state_dict or a training checkpoint ("model" key).
    Loaded with weights_only=True (no code runs); DDP's "module." prefix is removed."""
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict):
        raise ValueError(f"{path} holds no state_dict")
    if obj and all(k.startswith("module.") for k in obj):
        obj = OrderedDict((k[len("module."):], v) for k, v in obj.items())
    return obj


def _rng_states(env: Env) -> list:
    """Every rank's CPU (and CUDA) RNG state, gathered to all ranks."""
    mine = [torch.get_rng_state()]
    if env.device.type == "cuda":
        mine.append(torch.cuda.get_rng_state(env.device))
    if not env.distributed:
        return [mine]
    gathered = [None] * env.world
    dist.all_gather_object(gathered, mine)
    return gathered


# ------------------------------------------------------------------------------------------------
# the commands

def _add_common(p, train: bool):
    g = p.add_argument_group("model")
    g.add_argument("--model", default="deeplabv3plus",
                   help="a builder of dilconv.models (deeplabv3plus, deeplabv3, fcn8s, ...) or 'tiny'")
    g.add_argument("--backbone", default=None, help="e.g. mobilenet_v2, resnet50, xception65")
    g.add_argument("--output-stride", type=int, default=None)
    g.add_argument("--aux-loss", action="store_true", help="train with the auxiliary head (weight "
                   "--aux-weight)" if train else "build the model with its auxiliary head")
    g.add_argument("--num-classes", type=int, default=None, help="default: the data set's")
    g.add_argument("--model-arg", action="append", metavar="KEY=VALUE",
                   help="extra keyword argument for the builder (repeatable), e.g. width_mult=0.5")
    g.add_argument("--backend", default="auto", choices=dilconv.registry.NAMES,
                   help="dilconv backend for every convolution")
    g.add_argument("--channels-last", action="store_true")
    d = p.add_argument_group("data")
    d.add_argument("--data", default="synthetic",
                   help="synthetic[:N_TRAIN[,N_VAL]] | voc:PATH | cityscapes:PATH")
    d.add_argument("--batch-size", type=int, default=8 if train else 1, help="per process")
    d.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    d.add_argument("--crop-size", type=int, default=None,
                   help="training crop (and the synthetic images' size); default 128/513/768 for "
                   "synthetic/voc/cityscapes")
    d.add_argument("--synthetic-classes", type=int, default=6)
    r = p.add_argument_group("run")
    r.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    r.add_argument("--amp", default="auto", choices=("auto", "off", "fp16", "bf16"),
                   help="mixed precision: auto = bf16 (else fp16) on CUDA, off on the CPU")
    r.add_argument("--dtype", default="float32", choices=("float32", "float64"),
                   help="parameter/compute dtype (float64: for verifying backends against each other)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--dist-backend", default=None, help="torch.distributed backend (default nccl "
                   "on CUDA, gloo on the CPU)")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_arguments(p):
    _add_common(p, train=True)
    o = p.add_argument_group("optimisation")
    o.add_argument("--steps", type=int, default=1000, help="total optimizer steps")
    o.add_argument("--optimizer", default="sgd", choices=("sgd", "adamw"))
    o.add_argument("--lr", type=float, default=None, help="base LR (default 0.01 sgd, 1e-3 adamw)")
    o.add_argument("--momentum", type=float, default=0.9)
    o.add_argument("--weight-decay", type=float, default=1e-4)
    o.add_argument("--poly-power", type=float, default=0.9)
    o.add_argument("--loss", default="ce", choices=("ce", "dice", "ce+dice"))
    o.add_argument("--aux-weight", type=float, default=0.4)
    o.add_argument("--scale", type=float, nargs=2, default=(0.5, 2.0), metavar=("LO", "HI"),
                   help="random scale range for voc/cityscapes")
    o.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm across processes (CUDA)")
    c = p.add_argument_group("output")
    c.add_argument("--out", default="runs/train", help="output folder")
    c.add_argument("--resume", default=None, help="checkpoint to resume from, or 'auto' "
                   "(OUT/checkpoint.pt when it exists)")
    c.add_argument("--checkpoint-every", type=int, default=500)
    c.add_argument("--keep-checkpoints", action="store_true",
                   help="also keep every checkpoint as OUT/checkpoint_<step>.pt")
    c.add_argument("--eval-every", type=int, default=0, help="steps between evaluations (0: at the end only)")
    c.add_argument("--no-eval", action="store_true", help="skip the evaluation at the end")
    c.add_argument("--per-rank-weights", action="store_true",
                   help="every rank also writes its final weights to OUT/model.rank<R>.pt "
                   "(to check that replicas agree)")
    c.add_argument("--log-every", type=int, default=1, help="steps between log.jsonl lines")


def add_eval_arguments(p):
    _add_common(p, train=False)
    p.add_argument("--weights", required=True, help="model.pt or checkpoint.pt")
    p.add_argument("--split", default="val")
    p.add_argument("--json", default=None, help="also write the results to this file")


def _crop(args):
    return args.crop_size or DEFAULT_CROP[parse_data_spec(args.data)[0]]


def _datasets(args, split):
    return build_dataset(args.data, split, crop_size=_crop(args), scale=tuple(args.scale)
                         if hasattr(args, "scale") else None, seed=args.seed,
                         synthetic_classes=args.synthetic_classes)


def _setup_model(args, env, num_classes):
    torch.manual_seed(args.seed)  # the same initial weights on every rank (DDP also broadcasts)
    model = build_model(args.model, num_classes, args.backbone, args.output_stride, args.aux_loss,
                        _parse_model_args(args.model_arg)).to(env.device, _DTYPES[args.dtype])
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _check_classes(args, ds):
    if args.num_classes is not None and args.num_classes != ds.num_classes:
        raise ValueError(f"--num-classes {args.num_classes} but the data set has {ds.num_classes}")
    return ds.num_classes


def _print(env, *a):
    if env.main:
        print(*a, flush=True)


def _report(res: dict, names) -> str:
    lines = [f"mIoU {100 * res['miou']:.2f}  pixel acc {100 * res['pixel_acc']:.2f}  "
             f"mean acc {100 * res['mean_acc']:.2f}  ({res['pixels']} pixels)"]
    for name, iou in zip(names, res["iou"]):
        lines.append(f"  {name:16s} {'   n/a' if math.isnan(iou) else f'{100 * iou:6.2f}'}")
    return "\n".join(lines)


def main(args) -> int:
    env = Env(args)
    finished = False
    try:
        rc = _train(args, env)
        finished = True
        return rc
    finally:
        env.close(finished)


def _train(args, env: Env) -> int:
    dilconv.use_backend(args.backend)
    dtype = amp_dtype(args.amp, env.device)
    if dtype is not None and args.dtype == "float64":
        raise ValueError("--dtype float64 and --amp do not mix; pass --amp off")
    train_set = _datasets(args, "train")
    num_classes = _check_classes(args, train_set)
    val_set = None if args.no_eval and not args.eval_every else _datasets(args, "val")
    model = _setup_model(args, env, num_classes)
    if args.sync_bn:
        if env.device.type != "cuda":
            raise RuntimeError("--sync-bn needs CUDA (torch's SyncBatchNorm has no CPU kernel)")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    net = model
    if env.distributed:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[env.device.index] if env.device.type == "cuda" else None)
    lr = args.lr if args.lr is not None else (0.01 if args.optimizer == "sgd" else 1e-3)
    params = [p for p in model.parameters() if p.requires_grad]
    if args.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=args.momentum, weight_decay=args.weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=args.weight_decay)
    scaler = torch.amp.GradScaler(env.device.type, enabled=dtype == torch.float16)

    ignore = train_set.ignore_index
    ce = losses.CrossEntropyLoss(ignore_index=ignore)
    dice = losses.DiceLoss(ignore_index=ignore)

    def criterion(logits, target):
        target = align_target(logits, target, ignore)
        if args.loss == "ce":
            return ce(logits, target)
        if args.loss == "dice":
            return dice(logits, target)
        return ce(logits, target) + dice(logits, target)

    os.makedirs(args.out, exist_ok=True)
    ckpt_path = os.path.join(args.out, "checkpoint.pt")
    step = 0
    resume = args.resume
    if resume == "auto":
        resume = ckpt_path if os.path.exists(ckpt_path) else None
    if resume:
        state = torch.load(resume, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        step = int(state["step"])
        rng = state.get("rng")
        if rng is not None and len(rng) == env.world:
            torch.set_rng_state(rng[env.rank][0])
            if env.device.type == "cuda" and len(rng[env.rank]) > 1:
                torch.cuda.set_rng_state(rng[env.rank][1], env.device)
        _print(env, f"resumed from {resume} at step {step}")
    else:
        torch.manual_seed(args.seed + env.rank)  # distinct dropout masks per rank

    sampler = DistributedSampler(train_set, num_replicas=env.world, rank=env.rank, shuffle=True,
                                 seed=args.seed, drop_last=True)
    steps_per_epoch = len(sampler) // args.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"the training set ({len(train_set)} samples) is smaller than one global "
                         f"batch ({args.batch_size} x {env.world} processes)")

    def loader_for(epoch, skip_batches):
        sampler.set_epoch(epoch)
        train_set.set_epoch(epoch)
        return DataLoader(train_set, batch_size=args.batch_size,
                          sampler=_Skip(sampler, skip_batches * args.batch_size),
                          num_workers=args.workers, pin_memory=env.device.type == "cuda",
                          drop_last=True, collate_fn=pad_collate,
                          generator=_generator(args.seed, epoch))

    def val_loader():
        return DataLoader(val_set, batch_size=args.batch_size, sampler=_Shard(len(val_set), env.rank, env.world),
                          num_workers=args.workers, collate_fn=pad_collate,
                          pin_memory=env.device.type == "cuda", generator=_generator(args.seed, -1))

    log = open(os.path.join(args.out, "log.jsonl"), "a") if env.main else None

    def write_log(rec):
        if log:
            log.write(json.dumps(rec) + "\n")
            log.flush()

    def save_checkpoint():
        rng = _rng_states(env)  # collective: every rank takes part
        if env.main:
            state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                     "args": _primitive_args(args), "rng": rng}
            if scaler.is_enabled():
                state["scaler"] = scaler.state_dict()
            _save(state, ckpt_path)
            if args.keep_checkpoints:
                _save(state, os.path.join(args.out, f"checkpoint_{step:07d}.pt"))

    def run_eval():
        res = evaluate(model, val_loader(), num_classes, env.device, dtype, ignore,
                       progress=env.main and not args.no_progress, channels_last=args.channels_last)
        write_log({"step": step, **{k: res[k] for k in ("miou", "pixel_acc", "mean_acc")}, "iou": res["iou"]})
        return res

    _print(env, f"training {args.model} ({sum(p.numel() for p in model.parameters()):,} parameters) "
           f"on {args.data} ({len(train_set)} samples, {num_classes} classes), {env.world} process(es) "
           f"on {env.device}, backend {args.backend}, amp {dtype or 'off'}, steps {step}->{args.steps}")
    bar = _bar(args.steps, "train", env.main and not args.no_progress, initial=step)
    net.train()
    t0 = time.perf_counter()
    res = None
    while step < args.steps:
        epoch, skip = divmod(step, steps_per_epoch)
        for images, target in loader_for(epoch, skip):
            images = images.to(env.device, _DTYPES[args.dtype], non_blocking=True)
            if args.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            target = target.to(env.device, non_blocking=True)
            cur_lr = poly_lr(lr, step, args.steps, args.poly_power)
            for g in opt.param_groups:
                g["lr"] = cur_lr
            with _autocast(env.device, dtype):
                out = _outputs(net(images))
                loss = criterion(_upcast(out["out"]), target)
                if "aux" in out and args.aux_loss:
                    loss = loss + args.aux_weight * criterion(_upcast(out["aux"]), target)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at step {step}")
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            step += 1
            if step % args.log_every == 0 or step == args.steps:
                shown = loss.detach()
                if env.distributed:  # the mean over ranks: what the step optimised
                    dist.all_reduce(shown)
                    shown /= env.world
                write_log({"step": step, "loss": shown.item(), "lr": cur_lr})
                bar.set_postfix(loss=f"{shown.item():.4f}", lr=f"{cur_lr:.2e}")
            bar.update(1)
            if args.checkpoint_every and step % args.checkpoint_every == 0 and step < args.steps:
                save_checkpoint()
            if args.eval_every and step % args.eval_every == 0 and step < args.steps:
                res = run_eval()
                if env.main:
                    bar.write(f"step {step}: mIoU {100 * res['miou']:.2f}")
            if step >= args.steps:
                break
    bar.close()
    elapsed = time.perf_counter() - t0
    save_checkpoint()
    if env.main:
        _save(model.state_dict(), os.path.join(args.out, "model.pt"))
    if args.per_rank_weights:
        _save(model.state_dict(), os.path.join(args.out, f"model.rank{env.rank}.pt"))
    _print(env, f"{args.steps} steps done in {elapsed:.1f} s; weights in {os.path.join(args.out, 'model.pt')}")
    if not args.no_eval:
        res = run_eval()
        _print(env, _report(res, val_set.class_names))
        if env.main:
            with open(os.path.join(args.out, "metrics.json"), "w") as f:
                json.dump({"step": step, **res}, f, indent=1)
    if log:
        log.close()
    return 0


def eval_main(args) -> int:
    env = Env(args)
    finished = False
    try:
        dilconv.use_backend(args.backend)
        dtype = amp_dtype(args.amp, env.device)
        ds = build_dataset(args.data, args.split, crop_size=_crop(args), seed=args.seed,
                           synthetic_classes=args.synthetic_classes)
        num_classes = _check_classes(args, ds)
        model = _setup_model(args, env, num_classes)
        model.load_state_dict(load_weights(args.weights))
        loader = DataLoader(ds, batch_size=args.batch_size, sampler=_Shard(len(ds), env.rank, env.world),
                            num_workers=args.workers, collate_fn=pad_collate,
                            pin_memory=env.device.type == "cuda")
        t0 = time.perf_counter()
        res = evaluate(model, loader, num_classes, env.device, dtype, ds.ignore_index,
                       progress=env.main and not args.no_progress, channels_last=args.channels_last)
        _print(env, f"{args.model} on {args.data} [{args.split}], {len(ds)} images, "
               f"{time.perf_counter() - t0:.1f} s, backend {args.backend}")
        _print(env, _report(res, ds.class_names))
        if env.main and args.json:
            with open(args.json, "w") as f:
                json.dump(res, f, indent=1)
        finished = True
        return 0
    finally:
        env.close(finished)
