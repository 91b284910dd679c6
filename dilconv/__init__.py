"""dilconv: dilated, depthwise, separable, grouped and transposed 2-D convolution for PyTorch.

    import dilconv
    conv = dilconv.AtrousConv2d(256, 256, 3, padding=12, dilation=12)   # drop-in nn.Conv2d
    dilconv.backends()            # usable backends here
    with dilconv.use_backend("cpu"): y = conv(x)
"""
from dilconv import _ext, _ops  # noqa: F401  (loads the extension; registers fake/autograd)
from dilconv import functional

_ext._warm_cache()
from dilconv.registry import backends, current_backend, use_backend
from dilconv.convert import convert
from dilconv.modules import (
    AtrousConv2d,
    ConvNormActSequential,
    ConvTranspose2d,
    DepthwiseConv2d,
    DepthwiseSeparableConv2d,
    GroupedConv2d,
    conv_norm_act,
    fold_batchnorm,
)

try:
    from importlib.metadata import version as _version

    __version__ = _version("dilconv")
except Exception:  # a source checkout that was never installed
    __version__ = "0.1.0"

__all__ = [
    "AtrousConv2d", "ConvNormActSequential", "ConvTranspose2d", "DepthwiseConv2d",
    "DepthwiseSeparableConv2d", "GroupedConv2d", "backends", "conv_norm_act", "convert",
    "current_backend", "fold_batchnorm", "functional", "use_backend", "__version__",
]
