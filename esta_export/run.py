"""The main job as a run configuration (Olive-style): the CLI is sugar over a config that can be
printed with ``--dry-run``, saved, and replayed with ``--config``."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from .errors import InputError


@dataclass
class RunConfig:
    supernet: str
    target: str = "cpu"
    out: str | None = None
    stitches: str = "all"
    opset: int | None = None
    decompose_layernorm: bool = False
    num_heads: str | None = None
    fresh: bool = False

    def resolved_out(self) -> Path:
        if self.out:
            return Path(self.out)
        return Path("out") / f"{Path(self.supernet).stem}-{Path(self.target).stem}"

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "RunConfig":
        if args.config:
            path = Path(args.config)
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError) as err:
                raise InputError(f"cannot read run configuration {path} ({err})",
                                 hint="give a JSON file written by --dry-run") from None
            known = {f.name for f in fields(cls)}
            if not isinstance(data, dict) or set(data) - known or "supernet" not in data:
                raise InputError(f"run configuration {path} has unknown or missing keys",
                                 hint=f"allowed keys: {sorted(known)}")
            return cls(**data)
        if not getattr(args, "supernet", None):
            raise InputError("no supernet given", hint="run 'esta-export SUPERNET --target T'")
        return cls(supernet=args.supernet, target=args.target, out=args.out, stitches=args.stitches,
                   opset=args.opset, decompose_layernorm=args.decompose_layernorm, num_heads=args.num_heads,
                   fresh=args.fresh)

    def to_json(self) -> dict:
        return asdict(self)


def run_pipeline(args: argparse.Namespace) -> int:
    from .onnx_export import DEFAULT_OPSET, ExportSettings
    from .pipeline import run_export
    from .supernet.formats import load_supernet
    from .supernet.formats.checks import parse_num_heads

    cfg = RunConfig.from_args(args)
    if args.dry_run:
        print(json.dumps(cfg.to_json(), indent=2))
        return 0
    loaded = load_supernet(cfg.supernet, parse_num_heads(cfg.num_heads))
    out = cfg.resolved_out()
    settings = ExportSettings(opset=cfg.opset or DEFAULT_OPSET,
                              layernorm="decomposed" if cfg.decompose_layernorm else "op")
    run_export(loaded, out / "export", stitches=cfg.stitches, settings=settings, fresh=cfg.fresh, quiet=args.quiet)
    return 0
