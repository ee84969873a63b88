"""esta-export convert CKPT OUT.safetensors"""

from __future__ import annotations

import argparse

from . import command
from .common import add_supernet_args


@command("convert", order=30, help="convert an SN-Net / SN-Netv2 checkpoint to the native .safetensors format")
class Convert:
    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        add_supernet_args(p)
        p.add_argument("output", metavar="OUT.safetensors", help="native supernet file to write")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        from pathlib import Path

        from ..errors import InputError
        from ..progress import info
        from ..supernet.formats import save_supernet
        from .common import load_from_args

        out = Path(args.output)
        if out.suffix != ".safetensors":
            raise InputError(f"output file must end in .safetensors, got {out.name}",
                             hint="name it <name>.safetensors")
        if out.resolve() == Path(args.supernet).resolve():
            raise InputError("output file is the input file", hint="choose another output name")
        loaded = load_from_args(args)
        save_supernet(loaded.model, out, loaded.spec)
        info(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, {len(loaded.model.space)} stitches)")
        return 0
