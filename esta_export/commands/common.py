"""Argument helpers shared by commands (light: argparse only)."""

from __future__ import annotations

import argparse


def add_supernet_args(p: argparse.ArgumentParser, positional: bool = True) -> None:
    if positional:
        p.add_argument("supernet", metavar="SUPERNET",
                       help="supernet file: esta-export .safetensors, or an SN-Net / SN-Netv2 checkpoint (.pth)")
    p.add_argument("--num-heads", metavar="H1,H2,...", default=None,
                   help="attention heads per anchor (default: from the file, or width/64 for SN-Net checkpoints)")


def add_quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true", help="print only errors and the final summary")


def load_from_args(args: argparse.Namespace):
    """Load the supernet named by ``args`` and say which head counts are used (no tensor reveals them)."""
    from ..progress import info
    from ..supernet.formats import load_supernet
    from ..supernet.formats.checks import parse_num_heads

    loaded = load_supernet(args.supernet, parse_num_heads(getattr(args, "num_heads", None)))
    if not getattr(args, "quiet", False) and not getattr(args, "json", False):
        heads = ",".join(map(str, loaded.num_heads))
        info(f"supernet {loaded.path.name}: {loaded.source_format}, {len(loaded.model.space)} stitches, "
             f"heads {heads} ({loaded.spec.num_heads_source})")
    return loaded


def add_compiled_args(p: argparse.ArgumentParser) -> None:
    """COMPILED_DIR, --target and --store: what profile and select both read."""
    p.add_argument("compiled_dir", metavar="COMPILED_DIR", help="folder holding compile.json")
    p.add_argument("--target", required=True, help="target name or path to a .toml")
    p.add_argument("--store", metavar="PATH", help="profile store (default: OUT/profiles/TARGET.jsonl)")
