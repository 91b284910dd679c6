"""`python -m dilconv <command>`: info, and the commands other parts register in COMMANDS."""
from __future__ import annotations

import argparse
import importlib
import sys

# command -> (module, help). Each module has `add_arguments(parser)` and `main(args) -> int`.
COMMANDS = {
    "info": ("dilconv.cli_info", "versions, build and usable backends"),
    "demo": ("dilconv.cli_demo", "every usable backend on an atrous block vs torch"),
    "train": ("dilconv.train", "train a segmentation network (single process or under torchrun)"),
    "eval": ("dilconv.evaluate", "mIoU and pixel accuracy of a trained segmentation network"),
    "kernels": ("dilconv.kernels_report", "static resource report of the CUDA kernels (registers, spills, smem, occupancy)"),
    "bench": ("dilconv.bench.cli", "op and network benchmark suites vs torch; --gpu-model: static GPU report"),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dilconv", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (mod, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_)
        p.set_defaults(_module=mod)
        importlib.import_module(mod).add_arguments(p)
    args = parser.parse_args(argv)
    return importlib.import_module(args._module).main(args) or 0


if __name__ == "__main__":
    sys.exit(main())
