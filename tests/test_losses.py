"""Losses (cross-entropy, soft Dice, U-Net border weights) and metrics (confusion matrix, mIoU,
pixel accuracy, distributed all-reduce) against hand-computed values and float64 references."""
import math
import socket
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import dilconv
from dilconv import losses, metrics
from tolerance import assert_close_rel

IGN = 255


def _batch(n=2, c=4, h=5, w=6, ignore_frac=0.2, dtype=torch.float64):
    logits = torch.randn(n, c, h, w, dtype=dtype, requires_grad=True)
    target = torch.randint(0, c, (n, h, w))
    target[torch.rand(n, h, w) < ignore_frac] = IGN
    return logits, target


# ------------------------------------------------------------------------------------------------
# cross-entropy

def test_cross_entropy_matches_hand_reference():
    logits, target = _batch()
    got = losses.cross_entropy(logits, target)
    lp = torch.log_softmax(logits, 1)
    terms = [-lp[n, target[n, i, j], i, j] for n in range(2) for i in range(5) for j in range(6)
             if target[n, i, j] != IGN]
    ref = torch.stack(terms).mean()
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=0)
    got.backward()
    assert logits.grad.abs().sum() > 0


def test_cross_entropy_two_pixel_hand_value():
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 0.0]]]])  # (1, 2, 1, 2)
    target = torch.tensor([[[0, 1]]])
    expected = (math.log(1 + math.exp(-2)) + math.log(2)) / 2
    assert losses.cross_entropy(logits, target).item() == pytest.approx(expected, rel=1e-6)
    target_ign = torch.tensor([[[0, IGN]]])
    assert losses.cross_entropy(logits, target_ign).item() == pytest.approx(math.log(1 + math.exp(-2)), rel=1e-6)


def test_cross_entropy_all_ignored_is_zero_with_graph():
    logits, target = _batch()
    target.fill_(IGN)
    loss = losses.cross_entropy(logits, target)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_cross_entropy_bad_input():
    logits, target = _batch()
    with pytest.raises(ValueError, match="target labels must be in"):
        losses.cross_entropy(logits, target.clamp(max=4) * 0 + 7)
    with pytest.raises(ValueError, match="does not match"):
        losses.cross_entropy(logits, target[:, :4])
    with pytest.raises(ValueError, match="integer"):
        losses.cross_entropy(logits, target.float())


# ------------------------------------------------------------------------------------------------
# soft Dice

def _dice_ref(logits, target, smooth, per_image, include_bg):
    p = torch.softmax(logits, 1)
    n, c = logits.shape[:2]
    out = []
    groups = [[i] for i in range(n)] if per_image else [list(range(n))]
    for grp in groups:
        for k in range(0 if include_bg else 1, c):
            inter = ps = ts = 0.0
            for i in grp:
                valid = target[i] != IGN
                pk = p[i, k][valid]
                tk = (target[i][valid] == k).double()
                inter = inter + (pk * tk).sum()
                ps = ps + pk.sum()
                ts = ts + tk.sum()
            out.append((2 * inter + smooth) / (ps + ts + smooth))
    return 1 - torch.stack(out).mean()


@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("include_bg", [True, False])
def test_dice_matches_reference(per_image, include_bg):
    logits, target = _batch()
    got = losses.dice_loss(logits, target, smooth=0.5, per_image=per_image,
                           include_background=include_bg)
    ref = _dice_ref(logits.detach(), target, 0.5, per_image, include_bg)
    torch.testing.assert_close(got.double(), ref, rtol=1e-6, atol=1e-7)


def test_dice_hand_value_and_perfect_prediction():
    # one-hot-like logits -> probabilities ~ exact; 2 classes, 4 pixels
    target = torch.tensor([[[0, 0, 1, 1]]])
    logits = torch.full((1, 2, 1, 4), -50.0)
    logits[0, 0, 0, :3] = 50.0   # predicts 0,0,0,1
    logits[0, 1, 0, 3] = 50.0
    # class 0: inter 2, |P| 3, |T| 2 -> 4/5 ; class 1: inter 1, |P| 1, |T| 2 -> 2/3 (smooth 0)
    expected = 1 - (4 / 5 + 2 / 3) / 2
    assert losses.dice_loss(logits, target, smooth=0.0).item() == pytest.approx(expected, abs=1e-6)
    perfect = torch.where(F.one_hot(target, 2).permute(0, 3, 1, 2).bool(), 50.0, -50.0)
    assert losses.dice_loss(perfect, target, smooth=0.0).item() == pytest.approx(0.0, abs=1e-6)


def test_dice_gradcheck():
    logits, target = _batch(n=1, c=3, h=3, w=4)
    assert torch.autograd.gradcheck(lambda x: losses.dice_loss(x, target, smooth=1.0), (logits,))


# ------------------------------------------------------------------------------------------------
# U-Net border weights

def _weight_map_bruteforce(inst, w0, sigma):
    """Literal definition: distances from every background pixel to every pixel of every cell."""
    inst = inst.numpy()
    h, w = inst.shape
    ids = [k for k in np.unique(inst) if k != 0]
    labels = (inst > 0).astype(int)
    counts = {c: (labels == c).sum() for c in np.unique(labels)}
    out = np.zeros((h, w))
    for y in range(h):
        for x in range(w):
            wc = labels.size / (len(counts) * counts[labels[y, x]])
            if inst[y, x] == 0 and len(ids) >= 2:
                ds = sorted(min(math.hypot(y - yy, x - xx) for yy, xx in zip(*np.nonzero(inst == k)))
                            for k in ids)
                wc += w0 * math.exp(-(ds[0] + ds[1]) ** 2 / (2 * sigma ** 2))
            out[y, x] = wc
    return torch.from_numpy(out)


def test_unet_weight_map_hand_value():
    # two 2x2 cells in an 8-wide row band separated by a 2-pixel gap
    inst = torch.zeros(4, 8, dtype=torch.int64)
    inst[1:3, 1:3] = 1
    inst[1:3, 5:7] = 2
    w = losses.unet_weight_map(inst, w0=10, sigma=5)
    # 8 cell pixels, 24 background: w_c = 32 / (2 * 8) = 2 for cells, 32 / (2 * 24) = 2/3 for bg
    assert w[1, 1].item() == pytest.approx(2.0)
    # pixel (1, 3): d1 = 1 (cell 1 at (1, 2)), d2 = 2 (cell 2 at (1, 5))
    assert w[1, 3].item() == pytest.approx(2 / 3 + 10 * math.exp(-9 / 50), rel=1e-6)
    # pixel (0, 0): d1 = sqrt(2) (cell 1 at (1, 1)), d2 = hypot(1, 5) (cell 2 at (1, 5))
    d = math.sqrt(2) + math.hypot(1, 5)
    assert w[0, 0].item() == pytest.approx(2 / 3 + 10 * math.exp(-d * d / 50), rel=1e-6)
    # balance=False: w_c = 1
    wb = losses.unet_weight_map(inst, balance=False)
    assert wb[1, 1].item() == 1.0 and wb[1, 3].item() == pytest.approx(1 + 10 * math.exp(-9 / 50), rel=1e-6)


def test_unet_weight_map_matches_bruteforce_on_random_cells():
    g = torch.Generator().manual_seed(3)
    inst = torch.zeros(14, 17, dtype=torch.int64)
    for k in range(1, 5):  # random blobs, possibly touching
        cy, cx = torch.randint(0, 14, (), generator=g), torch.randint(0, 17, (), generator=g)
        r = 1 + int(torch.randint(0, 3, (), generator=g))
        yy, xx = torch.meshgrid(torch.arange(14), torch.arange(17), indexing="ij")
        inst[((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) & (inst == 0)] = k
    got = losses.unet_weight_map(inst, w0=10, sigma=5)
    ref = _weight_map_bruteforce(inst, 10, 5)
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)


def test_unet_weight_map_single_cell_has_no_border_term_and_batches():
    inst = torch.zeros(2, 6, 6, dtype=torch.int64)
    inst[0, 2:4, 2:4] = 1
    inst[1, 0:2, 0:2] = 1
    inst[1, 4:6, 4:6] = 2
    w = losses.unet_weight_map(inst)
    assert w.shape == (2, 6, 6)
    assert torch.allclose(w[0][inst[0] == 0], torch.full((32,), 36 / 64))
    torch.testing.assert_close(w[1], losses.unet_weight_map(inst[1]))
    assert (w[1][inst[1] == 0] > 36 / 64).all()


def test_unet_weighted_loss_matches_reference_and_module():
    logits, target = _batch(n=1, c=2, h=8, w=8, ignore_frac=0.0)
    inst = torch.zeros(1, 8, 8, dtype=torch.int64)
    inst[0, 1:4, 1:4] = 1
    inst[0, 1:4, 5:8] = 2
    target = (inst > 0).long()
    wmap = losses.unet_weight_map(inst, target)
    lp = torch.log_softmax(logits, 1)
    ref = -(wmap.double() * lp.gather(1, target[:, None])[:, 0]).mean()
    got = losses.unet_weighted_loss(logits, target, wmap)
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=0)
    mod = losses.UNetWeightedLoss()(logits, target, instances=inst)
    torch.testing.assert_close(mod, ref, rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="instances"):
        losses.UNetWeightedLoss()(logits, target)


# ------------------------------------------------------------------------------------------------
# metrics

def test_confusion_matrix_hand_values():
    target = torch.tensor([[0, 0, 1, 1, 2, IGN]])
    pred = torch.tensor([[0, 1, 1, 1, 0, 2]])
    cm = metrics.confusion_matrix(pred, target, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    s = metrics.scores(cm)
    # IoU: c0 1/(2+2-1)=1/3, c1 2/(2+3-2)=2/3, c2 0/(1+0-0)=0
    assert s["iou"] == pytest.approx([1 / 3, 2 / 3, 0.0])
    assert s["miou"] == pytest.approx(1 / 3)
    assert s["pixel_acc"] == pytest.approx(3 / 5)
    assert s["mean_acc"] == pytest.approx((1 / 2 + 1 + 0) / 3)


def test_absent_class_is_excluded_from_the_mean():
    target = torch.tensor([[0, 1]])
    cm = metrics.confusion_matrix(target.clone(), target, 4)
    s = metrics.scores(cm)
    assert math.isnan(s["iou"][2]) and math.isnan(s["iou"][3])
    assert s["miou"] == 1.0


def test_confusion_matrix_random_vs_loop_and_batch_accumulation():
    k = 5
    scores_ = torch.randn(3, k, 7, 9)
    target = torch.randint(0, k, (3, 7, 9))
    target[torch.rand(3, 7, 9) < 0.3] = IGN
    ref = np.zeros((k, k), dtype=np.int64)
    pred = scores_.argmax(1)
    for t, p in zip(target.flatten().tolist(), pred.flatten().tolist()):
        if t != IGN:
            ref[t, p] += 1
    acc = metrics.ConfusionMatrix(k)
    for i in range(3):  # one image at a time, scores form
        acc.update(scores_[i:i + 1], target[i:i + 1])
    assert acc.mat.tolist() == ref.tolist()
    whole = metrics.ConfusionMatrix(k).update(pred, target)
    assert whole.compute() == acc.compute()
    acc.reset()
    assert acc.mat.sum() == 0


def test_metrics_bad_input():
    with pytest.raises(ValueError, match="target labels"):
        metrics.confusion_matrix(torch.tensor([[0]]), torch.tensor([[9]]), 3)
    with pytest.raises(ValueError, match="predicted labels"):
        metrics.confusion_matrix(torch.tensor([[5]]), torch.tensor([[0]]), 3)
    with pytest.raises(ValueError, match="differ"):
        metrics.confusion_matrix(torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 3, dtype=torch.long), 3)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _allreduce_worker(rank, world, port, results):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        g = torch.Generator().manual_seed(100 + rank)
        target = torch.randint(0, 3, (2, 4, 4), generator=g)
        pred = torch.randint(0, 3, (2, 4, 4), generator=g)
        cm = metrics.ConfusionMatrix(3).update(pred, target).all_reduce()
        results[rank] = cm.mat.tolist()
    finally:
        dist.destroy_process_group()


def test_confusion_matrix_all_reduce_two_processes():
    import torch.multiprocessing as mp

    world = 2
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_allreduce_worker, args=(world, _free_port(), results), nprocs=world, join=True)
    expected = torch.zeros(3, 3, dtype=torch.int64)
    for rank in range(world):
        g = torch.Generator().manual_seed(100 + rank)
        target = torch.randint(0, 3, (2, 4, 4), generator=g)
        pred = torch.randint(0, 3, (2, 4, 4), generator=g)
        expected += metrics.confusion_matrix(pred, target, 3)
    assert results[0] == results[1] == expected.tolist()


# ------------------------------------------------------------------------------------------------
# cross-entropy under a dilconv backend: dilconv::cross_entropy (CPU kernels, one pass each way)

from dilconv import _ext  # noqa: E402

needs_ext = pytest.mark.skipif(not _ext.loaded, reason="dilconv's C++ extension is not built")


@pytest.fixture(params=["native", "avx2", "base"])
def isa(request, monkeypatch):
    if request.param != "native":
        monkeypatch.setenv("DILCONV_CPU_ISA", request.param)
    return request.param


@pytest.fixture
def fused_only(monkeypatch):
    """Fails a test whose cross-entropy falls back to torch's (so it cannot pass vacuously)."""
    def no_fallback(*a, **k):
        raise AssertionError("F.cross_entropy ran: the fused path was expected")
    proxy = types.SimpleNamespace(**{**vars(F), "cross_entropy": no_fallback})
    monkeypatch.setattr(losses, "F", proxy)  # losses' F only: the references still use torch's


def _ce_case(n, c, h, w, dtype, layout, scale=3.0, ignore_frac=0.2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w + (3 if layout == "slice" else 0), generator=g,
                    dtype=torch.float64) * scale
    if layout == "slice":  # a view: no stride is the plain one
        x = x[..., 3:]
    x = x.to(dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    t = torch.randint(0, c, (n, h, w), generator=g)
    t[torch.rand(n, h, w, generator=g) < ignore_frac] = IGN
    return x, t


_TOL = {torch.float32: 1e-5, torch.float64: 1e-12, torch.float16: 1e-2, torch.bfloat16: 1e-2}


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "slice"])
@pytest.mark.parametrize("shape", [(2, 21, 33, 35), (1, 1, 5, 7), (2, 3, 1, 17), (3, 40, 9, 16),
                                   (1, 5, 4, 4), (0, 4, 3, 3)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_fused_cross_entropy_matches_float64(isa, fused_only, dtype, layout, shape, reduction):
    """Loss and logits gradient against torch's float64 cross-entropy: every kernel variant,
    both layouts and a strided view, one class (the gradient is 0), pixel counts that are not a
    vector multiple (the scalar tail), an empty batch, ignored pixels, all three reductions."""
    x, t = _ce_case(*shape, dtype, layout)
    xr = x.detach().double().requires_grad_()
    ref = F.cross_entropy(xr, t, ignore_index=IGN, reduction=reduction)
    xf = x.detach().requires_grad_()
    got = losses.cross_entropy(xf, t, reduction=reduction, backend="cpu")
    _check_loss_and_grad(got, ref, xf, xr, t, reduction, layout)


def _check_loss_and_grad(got, ref, xf, xr, t, reduction, layout):
    """got (from the logits xf) against ref (from their float64 copy xr): the loss, then the
    logits gradient for a random output gradient, its dtype and layout."""
    dtype = xf.dtype
    assert got.dtype == dtype and got.shape == ref.shape
    if reduction == "mean" and not (t != IGN).any():
        ref = ref.new_zeros(())  # the all-void / empty batch gives 0 (see above)
    assert_close_rel(got, ref.detach(), _TOL[dtype])
    if got.numel() == 0:
        return
    gout = torch.randn(ref.shape, dtype=torch.float64)
    if ref.requires_grad:
        ref.backward(gout)
    got.backward(gout.to(dtype))
    assert xf.grad.dtype == dtype and xf.grad.shape == xf.shape
    if layout == "channels_last":  # the gradient keeps the logits' layout
        assert xf.grad.is_contiguous(memory_format=torch.channels_last)
    assert_close_rel(xf.grad, xr.grad if xr.grad is not None else torch.zeros_like(xr), _TOL[dtype])


def _loss_and_grad_vs_float64(x, t, reduction="mean", backend="cpu"):
    """losses.cross_entropy's value and logits gradient against torch's in float64."""
    xr = x.detach().double().requires_grad_()
    ref = F.cross_entropy(xr, t, ignore_index=IGN, reduction=reduction)
    xf = x.detach().clone().requires_grad_()
    got = losses.cross_entropy(xf, t, reduction=reduction, backend=backend)
    assert got.dtype == x.dtype
    assert_close_rel(got, ref.detach(), _TOL[x.dtype])
    ref.backward()
    got.backward()
    assert_close_rel(xf.grad, xr.grad, _TOL[x.dtype])


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fused_cross_entropy_half_precision(fused_only, dtype):
    x, t = _ce_case(2, 7, 9, 21, dtype, "nchw")
    _loss_and_grad_vs_float64(x, t, backend="auto")


@needs_ext
def test_fused_cross_entropy_extreme_logits(fused_only):
    """Large logits (the log-sum-exp subtracts the max), -inf logits (a class ruled out) and
    logit gaps beyond exp's range: as torch's float64."""
    x, t = _ce_case(2, 6, 5, 19, torch.float64, "nchw", scale=300.0)
    x[:, 2] = -float("inf")
    t[t == 2] = 0
    for dtype in (torch.float32, torch.float64):
        _loss_and_grad_vs_float64(x.to(dtype), t, reduction="sum")


@needs_ext
@pytest.mark.parametrize("offset", [1e6, 1e30])
def test_fused_cross_entropy_loss_of_offset_logits(fused_only, offset):
    """Logits far from zero (float32): the loss and its gradient from the differences to the
    pixel's largest logit, as torch's log_softmax; lse - x_k and exp(x_c - lse) had lost them to
    lse's rounding (1e30: a loss of 0 where it is log(C), a gradient of 1 - [c == k] where it is
    1/C - [c == k]; 1e6: gradient errors of ~3e-2). Vector part and scalar tail (63 pixels a
    row), plain and resized (resize_cross_entropy: the same kernels on a block of the resized
    logits)."""
    x, t = _ce_case(2, 5, 3, 21, torch.float64, "nchw", ignore_frac=0.0)
    x = (x.detach() * 2).round() / 2  # halves: x + 1e6 and its 2x interpolations exact in float32
    if offset == 1e30:
        x = torch.zeros_like(x)  # every class equal: log(C) a pixel
    xo = (x + offset).float()
    gout = torch.rand(t.shape, dtype=torch.float64) + 0.5
    xr = (xo.double() - offset).requires_grad_()  # exact differences
    ref = F.cross_entropy(xr, t, reduction="none")
    ref.backward(gout)
    for backend in ("cpu", "auto"):
        xf = xo.clone().requires_grad_()
        got = losses.cross_entropy(xf, t, reduction="none", backend=backend)
        assert_close_rel(got, ref, 1e-5, floor=1.0)
        got.backward(gout.float())
        assert_close_rel(xf.grad, xr.grad, 1e-5)
    # the same logits as the low-resolution half of a 2x upsampling (align_corners: the
    # resized logits at even positions are these exactly)
    t2 = torch.randint(0, 5, (2, 5, 41))
    xr = (xo.double() - offset).requires_grad_()
    ref = F.cross_entropy(F.interpolate(xr, size=(5, 41), mode="bilinear", align_corners=True), t2)
    ref.backward()
    xf = xo.clone().requires_grad_()
    got = losses.cross_entropy(xf, t2, upsample="bilinear", align_corners=True, backend="cpu")
    assert_close_rel(got, ref, 1e-5)
    got.backward()
    assert_close_rel(xf.grad, xr.grad, 1e-5)


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_cross_entropy_nan_logit_gives_nan(fused_only, dtype):
    """A NaN logit makes its pixel's loss NaN, as torch's (not a finite number), and leaves the
    other pixels exact; its gradient is NaN where torch's is."""
    x, t = _ce_case(1, 5, 3, 21, dtype, "nchw", ignore_frac=0.0)
    x[0, 1, 1, 4] = float("nan")  # a pixel in the vector part
    x[0, 3, 2, 20] = float("nan")  # and one in the scalar tail (63 pixels: 3 vectors + tail)
    t[0, 1, 4] = t[0, 2, 20] = 0  # not the NaN class: the loss is NaN through the log-sum-exp
    xr = x.detach().double().requires_grad_()
    ref = F.cross_entropy(xr, t, ignore_index=IGN, reduction="none")
    xf = x.detach().clone().requires_grad_()
    got = losses.cross_entropy(xf, t, reduction="none", backend="cpu")
    assert torch.equal(got.isnan(), ref.isnan()) and got.isnan().sum() == 2
    ok = ~ref.isnan()
    assert_close_rel(got[ok], ref[ok].detach(), _TOL[dtype])
    g = torch.rand(ref.shape, dtype=torch.float64)
    ref.backward(g)
    got.backward(g.to(dtype))
    assert torch.equal(xf.grad.isnan(), xr.grad.isnan())


@needs_ext
def test_fused_cross_entropy_gradcheck_and_opcheck(fused_only):
    x, t = _ce_case(2, 4, 3, 18, torch.float64, "nchw")
    x.requires_grad_()
    for red in ("mean", "sum", "none"):
        torch.autograd.gradcheck(lambda v: losses.cross_entropy(v, t, reduction=red, backend="cpu"),
                                 (x,))
    torch.autograd.gradgradcheck(lambda v: losses.cross_entropy(v, t, reduction="sum", backend="cpu"),
                                 (x,))
    xd = x.detach()
    torch.library.opcheck(torch.ops.dilconv.cross_entropy.default, (x, t, IGN))
    torch.library.opcheck(torch.ops.dilconv.cross_entropy.default, (xd.float(), t, IGN))
    _, lsum = torch.ops.dilconv.cross_entropy(xd, t, IGN)
    g = torch.randn(t.shape, dtype=torch.float64)
    torch.library.opcheck(torch.ops.dilconv.cross_entropy_backward.default, (g, xd, t, lsum, IGN))
    xcl = xd.contiguous(memory_format=torch.channels_last)  # the gradient follows the layout
    torch.library.opcheck(torch.ops.dilconv.cross_entropy.default, (xcl.requires_grad_(), t, IGN))
    torch.library.opcheck(torch.ops.dilconv.cross_entropy_backward.default,
                          (g, xcl.detach(), t, lsum, IGN))


@needs_ext
def test_fused_cross_entropy_all_ignored_and_fallbacks():
    x, t = _ce_case(2, 4, 5, 6, torch.float32, "nchw")
    xf = x.clone().requires_grad_()
    loss = losses.cross_entropy(xf, torch.full_like(t, IGN), backend="cpu")
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(xf.grad, torch.zeros_like(xf))
    # class weights, label smoothing and backend "torch" run torch's loss (same values)
    w = torch.rand(4) + 0.5
    for kw in ({"weight": w}, {"label_smoothing": 0.1}, {"backend": "torch"}):
        ref = F.cross_entropy(x.double(), t, ignore_index=IGN,
                              weight=w.double() if "weight" in kw else None,
                              label_smoothing=kw.get("label_smoothing", 0.0))
        got = losses.cross_entropy(x, t, backend=kw.pop("backend", "cpu"), **kw)
        assert_close_rel(got, ref, 1e-5)


@needs_ext
def test_fused_cross_entropy_bad_input():
    x, t = _ce_case(1, 4, 5, 6, torch.float32, "nchw")
    for bad in (7, 4, -1):
        tb = t.clone()
        tb[0, 2, 3] = bad
        with pytest.raises(ValueError, match="target labels must be in"):
            losses.cross_entropy(x, tb, backend="cpu")
        # the backward op called directly with the same targets: an error, no write out of bounds
        _, lsum = torch.ops.dilconv.cross_entropy(x, t, IGN)
        with pytest.raises(ValueError, match="target labels must be in"):
            torch.ops.dilconv.cross_entropy_backward(torch.ones(t.shape), x, tb, lsum, IGN)
    with pytest.raises(ValueError, match="does not match"):
        losses.cross_entropy(x, t[:, :4], backend="cpu")
    with pytest.raises(ValueError, match="integer"):
        losses.cross_entropy(x, t.float(), backend="cpu")
    with pytest.raises(ValueError, match="reduction"):
        losses.cross_entropy(x, t, reduction="max", backend="cpu")
    with pytest.raises(ValueError, match="unknown backend|backend"):
        losses.cross_entropy(x, t, backend="nope")
    with pytest.raises(RuntimeError, match="does not match"):
        torch.ops.dilconv.cross_entropy(x, t[:, :4], IGN)
    with pytest.raises(RuntimeError, match="at least one class"):
        torch.ops.dilconv.cross_entropy(x[:, :0], t, IGN)
    with pytest.raises(RuntimeError, match="integer class labels"):
        torch.ops.dilconv.cross_entropy(x, t.float(), IGN)
    _, lsum = torch.ops.dilconv.cross_entropy(x, t, IGN)
    with pytest.raises(RuntimeError, match="grad"):
        torch.ops.dilconv.cross_entropy_backward(torch.ones(1, 5, 5), x, t, lsum, IGN)


# ------------------------------------------------------------------------------------------------
# cross-entropy of logits upsampled in the loss (upsample="bilinear"): dilconv::resize_cross_entropy
# under a dilconv backend, F.interpolate + the loss otherwise

# (logits shape, target size): ~4x up across several units each way (the backward's units share
# output rows), a downsampling (input rows no output row reads: zero gradient), other factors, a
# one-row map, one class, an empty batch
_RESIZED = [((2, 21, 33, 35), (129, 137)), ((1, 21, 40, 41), (160, 163)),
            ((1, 5, 17, 19), (6, 7)), ((2, 3, 5, 7), (13, 9)), ((1, 4, 1, 9), (5, 20)),
            ((1, 1, 4, 4), (9, 9)), ((0, 4, 3, 3), (5, 5))]


def _resized_reference(x, t, align_corners, reduction="mean"):
    xr = x.detach().double().requires_grad_()
    up = F.interpolate(xr, size=tuple(t.shape[1:]), mode="bilinear", align_corners=align_corners)
    return xr, F.cross_entropy(up, t, ignore_index=IGN, reduction=reduction)


@needs_ext
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "slice"])
@pytest.mark.parametrize("case", _RESIZED, ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_resized_cross_entropy_matches_float64(isa, fused_only, dtype, layout, case, reduction,
                                               align_corners):
    (n, c, h, w), (oh, ow) = case
    x, _ = _ce_case(n, c, h, w, dtype, layout)
    g = torch.Generator().manual_seed(1)
    t = torch.randint(0, c, (n, oh, ow), generator=g)
    t[torch.rand(n, oh, ow, generator=g) < 0.2] = IGN
    xr, ref = _resized_reference(x, t, align_corners, reduction)
    xf = x.detach().requires_grad_()
    got = losses.cross_entropy(xf, t, reduction=reduction, upsample="bilinear",
                               align_corners=align_corners, backend="cpu")
    _check_loss_and_grad(got, ref, xf, xr, t, reduction, layout)


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_resized_cross_entropy_half_precision(fused_only, dtype):
    x, _ = _ce_case(2, 7, 9, 11, dtype, "nchw")
    t = torch.randint(0, 7, (2, 36, 44))
    xr, ref = _resized_reference(x, t, False)
    xf = x.detach().clone().requires_grad_()
    got = losses.cross_entropy(xf, t, upsample="bilinear", backend="auto")
    assert got.dtype == dtype
    assert_close_rel(got, ref.detach(), _TOL[dtype])
    ref.backward()
    got.backward()
    assert_close_rel(xf.grad, xr.grad, _TOL[dtype])


@needs_ext
def test_resized_cross_entropy_gradcheck_and_opcheck(fused_only):
    x, _ = _ce_case(2, 4, 3, 5, torch.float64, "nchw")
    t = torch.randint(0, 4, (2, 7, 11))
    t[0, 0, :4] = IGN
    x.requires_grad_()
    for ac in (False, True):
        fn = lambda v: losses.cross_entropy(v, t, reduction="sum", upsample="bilinear",  # noqa: E731
                                            align_corners=ac, backend="cpu")
        torch.autograd.gradcheck(fn, (x,))
        torch.autograd.gradgradcheck(fn, (x,))
    xd = x.detach()
    op, bwd = torch.ops.dilconv.resize_cross_entropy.default, torch.ops.dilconv.resize_cross_entropy_backward.default
    torch.library.opcheck(op, (x, t, False, IGN))
    torch.library.opcheck(op, (xd.float(), t, True, IGN))
    _, lsum = torch.ops.dilconv.resize_cross_entropy(xd, t, False, IGN)
    g = torch.randn(t.shape, dtype=torch.float64)
    torch.library.opcheck(bwd, (g, xd, t, lsum, False, IGN))
    xcl = xd.contiguous(memory_format=torch.channels_last)  # the gradient follows the layout
    torch.library.opcheck(op, (xcl.requires_grad_(), t, False, IGN))
    torch.library.opcheck(bwd, (g, xcl.detach(), t, lsum, False, IGN))


@needs_ext
def test_resized_cross_entropy_fallbacks():
    """Class weights, label smoothing and backend "torch" resize first, then torch's loss: the
    same values; logits already of the target's size are not resized."""
    x, _ = _ce_case(2, 4, 5, 6, torch.float32, "nchw")
    t = torch.randint(0, 4, (2, 10, 12))
    w = torch.rand(4) + 0.5
    up = F.interpolate(x.double(), size=(10, 12), mode="bilinear", align_corners=False)
    for kw in ({"weight": w}, {"label_smoothing": 0.1}, {"backend": "torch"}):
        ref = F.cross_entropy(up, t, ignore_index=IGN, weight=w.double() if "weight" in kw else None,
                              label_smoothing=kw.get("label_smoothing", 0.0))
        got = losses.cross_entropy(x, t, upsample="bilinear", backend=kw.pop("backend", "cpu"), **kw)
        assert_close_rel(got, ref, 1e-5)
    ts = torch.randint(0, 4, (2, 5, 6))
    assert_close_rel(losses.cross_entropy(x, ts, upsample="bilinear", backend="cpu"),
           F.cross_entropy(x.double(), ts, ignore_index=IGN), 1e-5)


@needs_ext
def test_resized_cross_entropy_bad_input():
    x, _ = _ce_case(1, 4, 5, 6, torch.float32, "nchw")
    t = torch.randint(0, 4, (1, 11, 13))
    _, lsum = torch.ops.dilconv.resize_cross_entropy(x, t, False, IGN)
    for bad in (7, 4, -1):
        tb = t.clone()
        tb[0, 2, 3] = bad
        with pytest.raises(ValueError, match="target labels must be in"):
            losses.cross_entropy(x, tb, upsample="bilinear", backend="cpu")
        with pytest.raises(ValueError, match="target labels must be in"):
            torch.ops.dilconv.resize_cross_entropy_backward(torch.ones(t.shape), x, tb, lsum, False, IGN)
    with pytest.raises(ValueError, match="upsample"):
        losses.cross_entropy(x, t, upsample="nearest", backend="cpu")
    for backend in ("cpu", "torch"):
        with pytest.raises(ValueError, match="batch"):
            losses.cross_entropy(x, t.expand(2, -1, -1), upsample="bilinear", backend=backend)
    with pytest.raises(ValueError, match="integer"):
        losses.cross_entropy(x, t.float(), upsample="bilinear", backend="cpu")
    with pytest.raises(RuntimeError, match="batch size"):
        torch.ops.dilconv.resize_cross_entropy(x, t.expand(2, -1, -1), False, IGN)
    with pytest.raises(RuntimeError, match="at least one class"):
        torch.ops.dilconv.resize_cross_entropy(x[:, :0], t, False, IGN)
    with pytest.raises(RuntimeError, match="integer class labels"):
        torch.ops.dilconv.resize_cross_entropy(x, t.float(), False, IGN)
    with pytest.raises(RuntimeError, match="empty"):
        torch.ops.dilconv.resize_cross_entropy(x[:, :, :0], t, False, IGN)
    with pytest.raises(RuntimeError, match="grad"):
        torch.ops.dilconv.resize_cross_entropy_backward(torch.ones(1, 11, 12), x, t, lsum, False, IGN)
    with pytest.raises(RuntimeError, match="lsum"):
        torch.ops.dilconv.resize_cross_entropy_backward(torch.ones(t.shape), x, t, lsum[:, :3], False, IGN)


@needs_ext
@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_models_hand_the_loss_their_logits_before_the_last_resize(backend):
    """resize_output = False: DeepLabV3+ and a DeepLabV3 return the classifier's logits, and the
    loss that upsamples them equals the loss of the full-size output (values and gradients)."""
    import copy

    from dilconv import models
    torch.manual_seed(0)
    for net in (models.deeplabv3plus(backbone="mobilenet_v2", num_classes=5, width_mult=0.35),
                models.deeplabv3(backbone="mobilenet_v2", num_classes=5, aux_loss=True,
                                 width_mult=0.35)):
        net = net.double().eval()  # float64: the two paths differ by rounding only
        x = torch.randn(2, 3, 33, 45, dtype=torch.float64)
        t = torch.randint(0, 5, (2, 33, 45))
        low = copy.deepcopy(net)
        low.resize_output = False
        with dilconv.use_backend(backend):
            full, lowres = net(x), low(x)
            assert full["out"].shape[2:] == (33, 45) and lowres["out"].shape[2:] != (33, 45)
            assert set(full) == set(lowres)
            a = losses.cross_entropy(full["out"], t)
            b = losses.cross_entropy(lowres["out"], t, upsample="bilinear")
            ga = torch.autograd.grad(a, list(net.parameters()), allow_unused=True)
            gb = torch.autograd.grad(b, list(low.parameters()), allow_unused=True)
        assert_close_rel(b, a.detach(), 1e-12)
        assert [u is None for u in gb] == [v is None for v in ga]  # (the aux head: unused)
        for u, v in zip(gb, ga):
            if u is not None:
                assert_close_rel(u, v, 1e-10)
