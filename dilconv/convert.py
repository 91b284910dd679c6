"""`dilconv.convert`: swap a model's torch.nn convolutions for dilconv modules in place."""
from __future__ import annotations

from typing import Optional

import torch.nn as nn

from dilconv import modules as M


def _dilconv_class(conv: nn.Module):
    if type(conv) is nn.ConvTranspose2d:
        return M.ConvTranspose2d
    if type(conv) is nn.Conv2d:
        if conv.groups > 1 and conv.groups == conv.in_channels:
            return M.DepthwiseConv2d
        return M.GroupedConv2d if conv.groups > 1 else M.AtrousConv2d
    return None


def _swap(conv: nn.Module, cls, backend):
    # A new module object over the same Parameter and buffer objects (and hooks): outputs,
    # gradients and optimiser state keep working; only the class, i.e. forward, changes.
    new = cls.__new__(cls)
    new.__dict__.update({k: (v.copy() if isinstance(v, dict) else v) for k, v in conv.__dict__.items()})
    new.backend = backend
    return new


def convert(model: nn.Module, backend: Optional[str] = None) -> nn.Module:
    """Replace every `nn.Conv2d` / `nn.ConvTranspose2d` (exact types, not subclasses, which may
    have their own forward) in `model` by the dilconv equivalent sharing its parameters.
    Returns the model (a bare conv is returned converted)."""
    if backend is not None:
        from dilconv import registry as backends

        backends.get_backend(backend)
    cls = _dilconv_class(model)
    if cls is not None:
        return _swap(model, cls, backend)
    for name, child in list(model.named_children()):
        cls = _dilconv_class(child)
        if cls is not None:
            setattr(model, name, _swap(child, cls, backend))
        else:
            convert(child, backend)
    return model
