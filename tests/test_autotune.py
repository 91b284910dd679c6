"""dilconv.autotune: the per-shape backend autotuner of "auto" on a GPU, tested on the CPU with a
fake timer (no GPU here): choice, persistence, key separation, safe loading of hostile files."""
from __future__ import annotations

import json
import os

import pytest
import torch

from dilconv import autotune, registry


def problem(**kw):
    base = dict(op="conv2d", device="cuda", dtype=torch.float16, n=2, c=64, h=33, w=33, k=64, r=3,
                s=3, stride=(1, 1), padding=(12, 12), dilation=(12, 12), groups=1,
                channels_last=True, max_numel=2 * 64 * 33 * 33, requires_grad=False)
    base.update(kw)
    return registry.Problem(**base)


class FakeTimer:
    """Returns fixed milliseconds per candidate and records what was timed."""

    def __init__(self, ms):
        self.ms = ms
        self.calls = []

    def __call__(self, fn):
        name = fn()
        self.calls.append(name)
        return self.ms[name]


def cands(*names):
    return {n: (lambda n=n: n) for n in names}


def test_picks_fastest_and_persists(tmp_path):
    path = str(tmp_path / "at.json")
    timer = FakeTimer({"cuda": 2.0, "triton": 1.5, "torch": 3.0})
    t = autotune.Autotuner(autotune.Cache(path), timer)
    key = autotune.problem_key(problem(), "NVIDIA H100")
    assert t.choose(key, cands("cuda", "triton", "torch")) == "triton"
    assert sorted(timer.calls) == ["cuda", "torch", "triton"]
    # cached in memory: no timing the second time
    assert t.choose(key, cands("cuda", "triton", "torch")) == "triton"
    assert len(timer.calls) == 3
    # persisted: a new process (new Cache on the same file) reuses it without timing
    timer2 = FakeTimer({"cuda": 0.1, "triton": 9.0, "torch": 9.0})
    t2 = autotune.Autotuner(autotune.Cache(path), timer2)
    assert t2.choose(key, cands("cuda", "triton", "torch")) == "triton"
    assert timer2.calls == []
    data = json.load(open(path))
    assert data["version"] == autotune.VERSION
    assert data["entries"][key]["times_ms"] == {"cuda": 2.0, "triton": 1.5, "torch": 3.0}


def test_cached_choice_no_longer_available_is_retuned(tmp_path):
    path = str(tmp_path / "at.json")
    key = autotune.problem_key(problem(), "gpu")
    autotune.Autotuner(autotune.Cache(path), FakeTimer({"triton": 1.0, "torch": 2.0})).choose(
        key, cands("triton", "torch"))
    timer = FakeTimer({"cuda": 1.0, "torch": 2.0})
    assert autotune.Autotuner(autotune.Cache(path), timer).choose(key, cands("cuda", "torch")) == "cuda"
    assert sorted(timer.calls) == ["cuda", "torch"]


@pytest.mark.parametrize("change", [
    dict(dtype=torch.bfloat16), dict(channels_last=False), dict(n=1), dict(dilation=(24, 24)),
    dict(groups=32), dict(op="conv_transpose2d"), dict(stride=(2, 2)), dict(requires_grad=True)])
def test_key_separates_dtype_layout_shape(change):
    assert autotune.problem_key(problem(), "gpu") != autotune.problem_key(problem(**change), "gpu")


def test_key_separates_devices():
    assert autotune.problem_key(problem(), "NVIDIA A100") != autotune.problem_key(problem(), "NVIDIA H100")


def test_ties_keep_candidate_order(tmp_path):
    t = autotune.Autotuner(autotune.Cache(str(tmp_path / "a.json")), FakeTimer({"cuda": 1.0, "torch": 1.0}))
    assert t.choose("k", cands("cuda", "torch")) == "cuda"


def test_failing_candidate_is_skipped(tmp_path):
    def timer(fn):
        name = fn()
        if name == "triton":
            raise RuntimeError("compile failed")
        return {"cuda": 3.0, "torch": 2.0}[name]

    t = autotune.Autotuner(autotune.Cache(str(tmp_path / "a.json")), timer)
    with pytest.warns(UserWarning, match="triton"):
        assert t.choose("k", cands("triton", "cuda", "torch")) == "torch"


@pytest.mark.parametrize("content", [
    "{not json",
    "[1, 2, 3]",
    json.dumps({"version": 99, "entries": {}}),
    json.dumps({"version": 1, "entries": []}),
    "\x00\x01binary",
    "[" * 100000,  # deep nesting: json raises RecursionError, must not crash
])
def test_corrupt_cache_is_ignored(tmp_path, content):
    path = tmp_path / "at.json"
    path.write_text(content)
    with pytest.warns(UserWarning, match="ignoring"):
        c = autotune.Cache(str(path))
    assert c.entries == {}


def test_malformed_entries_are_dropped(tmp_path):
    good = {"choice": "cuda", "times_ms": {"cuda": 1.0, "torch": 2.0}}
    entries = {
        "good": good,
        "bad_choice": {"choice": "os.system('rm -rf /')", "times_ms": {}},
        "bad_type": {"choice": 3},
        "bad_time": {"choice": "cuda", "times_ms": {"cuda": "fast"}},
        "nan_time": {"choice": "cuda", "times_ms": {"cuda": float("nan")}},
        "extra": {"choice": "cuda", "times_ms": {}, "__class__": "x"},
        "x" * 10000: good,
    }
    path = tmp_path / "at.json"
    path.write_text(json.dumps({"version": 1, "entries": entries}))
    with pytest.warns(UserWarning, match="dropped 6"):
        c = autotune.Cache(str(path))
    assert c.entries == {"good": good}


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "sub" / "at.json"
    c = autotune.Cache(str(path))
    c.put("k", "torch", {"torch": 1.0})
    c.save()
    assert json.load(open(path))["entries"]["k"]["choice"] == "torch"
    assert os.listdir(path.parent) == ["at.json"]
    with pytest.raises(ValueError):
        c.put("k2", "evil", {})


def test_pick_backend_times_real_backends_on_cpu(tmp_path):
    # the full path with registry backends on CPU tensors; the fake timer makes the second
    # candidate fastest, so the pick proves the timing (not the order) decided
    names = [n for n in ("cuda-emu", "cpu", "torch") if n in registry.backends()][:2]
    if len(names) < 2:
        pytest.skip("needs two usable CPU backends")
    p = problem(device="cpu", dtype=torch.float32, n=1, c=4, h=9, w=9, k=4, padding=(2, 2),
                dilation=(2, 2), max_numel=4 * 81)
    outs = []

    def timer(fn):
        out = fn()
        assert out.shape == (1, 4, 9, 9) and torch.isfinite(out).all()
        outs.append(out)
        return 2.0 if len(outs) == 1 else 1.0

    autotune.set_tuner(autotune.Autotuner(autotune.Cache(str(tmp_path / "a.json")), timer))
    try:
        bs = [registry.get_backend(n) for n in names]
        assert autotune.pick_backend(p, bs, device_name="cpu") is bs[1]
        assert len(outs) == 2
        torch.testing.assert_close(outs[0], outs[1], rtol=1e-4, atol=1e-4)
        assert autotune.pick_backend(p, bs, device_name="cpu") is bs[1]  # cached
        assert len(outs) == 2
    finally:
        autotune.set_tuner(None)


def test_enable_switch(monkeypatch):
    monkeypatch.setenv(autotune.ENV_ENABLE, "1")
    monkeypatch.setattr(autotune, "_enabled", None)
    assert autotune.enabled()
    autotune.enable(False)
    try:
        assert not autotune.enabled()
    finally:
        monkeypatch.setattr(autotune, "_enabled", None)
