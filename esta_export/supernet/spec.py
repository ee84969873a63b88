"""The supernet's JSON spec: everything the weights do not say (stored in the native file's metadata).

Versioned: a reader refuses a newer major version with a clear message. Parsing is strict (unknown
keys, wrong types and impossible values are FormatErrors naming the field), because the spec comes
from files users download.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from typing import Any

from ..errors import FormatError
from .anchors import STYLES, AnchorConfig

FORMAT = "esta-export/supernet"
FORMAT_VERSION = "1.0"
DEFAULT_MEAN = (0.485, 0.456, 0.406)   # ImageNet, DeiT's default preprocessing
DEFAULT_STD = (0.229, 0.224, 0.225)
ANCHOR_LINEARS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")


@dataclass(frozen=True)
class LoraSpec:
    rank: int
    alpha: float
    targets: tuple[str, ...] = ("attn.qkv", "attn.proj")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


@dataclass(frozen=True)
class AdaptationSpec:
    """ESTA: LoRA shared by all stitches on anchor linears, and per-stitch biases."""

    lora: LoraSpec | None = None
    stitch_lora: LoraSpec | None = None          # LoRA on stitching layers (SN-Netv2, ESTA)
    stitch_bias: bool = False                    # every stitch owns the biases it runs
    stitch_bias_targets: tuple[str, ...] = ANCHOR_LINEARS


@dataclass(frozen=True)
class InputSpec:
    image_size: int
    mean: tuple[float, ...] = DEFAULT_MEAN
    std: tuple[float, ...] = DEFAULT_STD
    labels: tuple[str, ...] | None = None
    in_chans: int = 3


@dataclass(frozen=True)
class SupernetSpec:
    anchors: tuple[AnchorConfig, ...]
    space: str
    space_params: dict = field(default_factory=dict)
    adaptation: AdaptationSpec = AdaptationSpec()
    input: InputSpec | None = None
    num_heads_source: str = "file"                # file | convention (width/64) | user
    training: dict | None = None                  # accuracy/importance per stitch, dataset, seed
    source: dict | None = None                    # where it was imported from

    @property
    def names(self) -> list[str]:
        return [a.name for a in self.anchors]

    @property
    def input_spec(self) -> InputSpec:
        if self.input is not None:
            return self.input
        return InputSpec(image_size=self.anchors[0].img_size, in_chans=self.anchors[0].in_chans)

    # -- JSON ------------------------------------------------------------------------------------
    def to_json(self) -> dict:
        d = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "anchors": [a.to_json() for a in self.anchors],
            "space": {"name": self.space, "params": dict(self.space_params)},
            "adaptation": _adaptation_json(self.adaptation),
            "input": None if self.input is None else {
                "image_size": self.input.image_size, "mean": list(self.input.mean),
                "std": list(self.input.std),
                "labels": None if self.input.labels is None else list(self.input.labels),
                "in_chans": self.input.in_chans},
            "num_heads_source": self.num_heads_source,
            "training": self.training,
            "source": self.source,
        }
        return d

    def dumps(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True)

    @classmethod
    def from_json(cls, d: Any) -> "SupernetSpec":
        return _parse_spec(d)

    @classmethod
    def loads(cls, text: str) -> "SupernetSpec":
        try:
            d = json.loads(text, parse_constant=_no_constant)
        except (json.JSONDecodeError, TypeError, RecursionError, ValueError) as err:
            raise FormatError(f"the supernet spec is not valid JSON ({err})",
                              hint="the file is damaged; convert the checkpoint again") from None
        return _parse_spec(d)

    def replace(self, **changes) -> "SupernetSpec":
        kw = {f.name: getattr(self, f.name) for f in fields(self)}
        kw.update(changes)
        return SupernetSpec(**kw)


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def _adaptation_json(a: AdaptationSpec) -> dict:
    def lora(l: LoraSpec | None):
        return None if l is None else {"rank": l.rank, "alpha": l.alpha, "targets": list(l.targets)}
    return {"lora": lora(a.lora), "stitch_lora": lora(a.stitch_lora), "stitch_bias": a.stitch_bias,
            "stitch_bias_targets": list(a.stitch_bias_targets)}


# -- strict parsing -------------------------------------------------------------------------------
def _bad(path: str, msg: str) -> FormatError:
    return FormatError(f"supernet spec field '{path}' {msg}",
                       hint="the file is damaged or was written by another tool; convert the checkpoint again")


def _obj(d: Any, path: str, required: set[str], optional: set[str] = frozenset()) -> dict:
    if not isinstance(d, dict):
        raise _bad(path, f"must be an object, got {type(d).__name__}")
    unknown = set(d) - required - set(optional)
    if unknown:
        raise _bad(path, f"has unknown keys {sorted(unknown)}")
    missing = required - set(d)
    if missing:
        raise _bad(path, f"is missing keys {sorted(missing)}")
    return d


def _int(v: Any, path: str, lo: int = 0, hi: int = 1 << 20) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise _bad(path, f"must be an integer in [{lo}, {hi}], got {v!r:.60}")
    return v


def _num(v: Any, path: str, lo: float = -math.inf, hi: float = math.inf, positive: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi \
            or (positive and v <= 0):
        raise _bad(path, f"must be a finite number{' > 0' if positive else ''}, got {v!r:.60}")
    return float(v)


def _str(v: Any, path: str, choices: tuple[str, ...] | None = None, maxlen: int = 256) -> str:
    if not isinstance(v, str) or len(v) > maxlen or (choices is not None and v not in choices):
        allowed = f" (one of {list(choices)})" if choices else ""
        raise _bad(path, f"must be a string{allowed}, got {v!r:.80}")
    return v


def _bool(v: Any, path: str) -> bool:
    if not isinstance(v, bool):
        raise _bad(path, f"must be true or false, got {v!r:.60}")
    return v


def _strlist(v: Any, path: str, maxlen: int = 100_000) -> tuple[str, ...]:
    if not isinstance(v, list) or len(v) > maxlen:
        raise _bad(path, "must be a list of strings")
    return tuple(_str(x, f"{path}[{i}]", maxlen=1024) for i, x in enumerate(v))


def _lora(d: Any, path: str) -> LoraSpec | None:
    if d is None:
        return None
    d = _obj(d, path, {"rank", "alpha"}, {"targets"})
    targets = _strlist(d.get("targets", ["attn.qkv", "attn.proj"]),
                       f"{path}.targets")
    for t in targets:
        if t not in ANCHOR_LINEARS:
            raise _bad(f"{path}.targets", f"has {t!r}; allowed: {list(ANCHOR_LINEARS)}")
    return LoraSpec(_int(d["rank"], f"{path}.rank", 1, 4096), _num(d["alpha"], f"{path}.alpha", positive=True),
                    targets)


def _parse_spec(d: Any) -> SupernetSpec:
    d = _obj(d, "spec", {"format", "format_version", "anchors", "space"},
             {"adaptation", "input", "num_heads_source", "training", "source"})
    if d["format"] != FORMAT:
        raise _bad("format", f"must be {FORMAT!r}, got {d['format']!r:.80}")
    version = _str(d["format_version"], "format_version")
    try:
        major = int(version.split(".")[0])
    except ValueError:
        raise _bad("format_version", f"must look like '1.0', got {version!r:.60}") from None
    if major > int(FORMAT_VERSION.split(".")[0]):
        raise FormatError(f"supernet format version {version} is newer than this esta-export reads "
                          f"({FORMAT_VERSION})", hint="upgrade esta-export")
    if not isinstance(d["anchors"], list) or not 1 <= len(d["anchors"]) <= 16:
        raise _bad("anchors", "must be a list of 1 to 16 anchors")
    anchors = []
    names = set()
    for i, a in enumerate(d["anchors"]):
        p = f"anchors[{i}]"
        a = _obj(a, p, {"name", "embed_dim", "depth", "num_heads"},
                 {"mlp_ratio", "patch_size", "img_size", "in_chans", "num_classes", "style", "qkv_bias", "ln_eps"})
        cfg = AnchorConfig(
            name=_str(a["name"], f"{p}.name", maxlen=64),
            embed_dim=_int(a["embed_dim"], f"{p}.embed_dim", 1, 65536),
            depth=_int(a["depth"], f"{p}.depth", 1, 1024),
            num_heads=_int(a["num_heads"], f"{p}.num_heads", 1, 4096),
            mlp_ratio=_num(a.get("mlp_ratio", 4.0), f"{p}.mlp_ratio", positive=True, hi=64),
            patch_size=_int(a.get("patch_size", 16), f"{p}.patch_size", 1, 4096),
            img_size=_int(a.get("img_size", 224), f"{p}.img_size", 1, 16384),
            in_chans=_int(a.get("in_chans", 3), f"{p}.in_chans", 1, 64),
            num_classes=_int(a.get("num_classes", 1000), f"{p}.num_classes", 1, 1_000_000),
            style=_str(a.get("style", "deit"), f"{p}.style", STYLES),
            qkv_bias=_bool(a.get("qkv_bias", True), f"{p}.qkv_bias"),
            ln_eps=_num(a.get("ln_eps", 1e-6), f"{p}.ln_eps", positive=True, hi=1.0),
        )
        if cfg.embed_dim % cfg.num_heads:
            raise _bad(f"{p}.num_heads", f"({cfg.num_heads}) must divide embed_dim ({cfg.embed_dim})")
        if cfg.img_size % cfg.patch_size:
            raise _bad(f"{p}.patch_size", f"({cfg.patch_size}) must divide img_size ({cfg.img_size})")
        if cfg.name in names:
            raise _bad(f"{p}.name", f"repeats {cfg.name!r}; anchor names must be unique")
        names.add(cfg.name)
        anchors.append(cfg)
    sp = _obj(d["space"], "space", {"name"}, {"params"})
    params = sp.get("params", {})
    if not isinstance(params, dict):
        raise _bad("space.params", "must be an object")
    ad = d.get("adaptation") or {}
    ad = _obj(ad, "adaptation", set(), {"lora", "stitch_lora", "stitch_bias", "stitch_bias_targets"})
    sbt = _strlist(ad.get("stitch_bias_targets", list(ANCHOR_LINEARS)), "adaptation.stitch_bias_targets")
    for t in sbt:
        if t not in ANCHOR_LINEARS:
            raise _bad("adaptation.stitch_bias_targets", f"has {t!r}; allowed: {list(ANCHOR_LINEARS)}")
    adaptation = AdaptationSpec(
        lora=_lora(ad.get("lora"), "adaptation.lora"),
        stitch_lora=_lora(_with_default_targets(ad.get("stitch_lora")), "adaptation.stitch_lora"),
        stitch_bias=_bool(ad.get("stitch_bias", False), "adaptation.stitch_bias"),
        stitch_bias_targets=sbt,
    )
    inp = None
    if d.get("input") is not None:
        i = _obj(d["input"], "input", {"image_size"}, {"mean", "std", "labels", "in_chans"})
        mean = tuple(_num(v, "input.mean") for v in _list(i.get("mean", list(DEFAULT_MEAN)), "input.mean"))
        std = tuple(_num(v, "input.std", positive=True) for v in _list(i.get("std", list(DEFAULT_STD)), "input.std"))
        in_chans = _int(i.get("in_chans", 3), "input.in_chans", 1, 64)
        if len(mean) != in_chans or len(std) != in_chans:
            raise _bad("input.mean", f"and input.std must have {in_chans} values")
        labels = None if i.get("labels") is None else _strlist(i["labels"], "input.labels")
        inp = InputSpec(_int(i["image_size"], "input.image_size", 1, 16384), mean, std, labels, in_chans)
    training = _training(d.get("training"))
    source = d.get("source")
    if source is not None and not isinstance(source, dict):
        raise _bad("source", "must be an object or null")
    space = _str(sp["name"], "space.name")
    params = _space_params(space, params)
    _cross_check(anchors, inp)
    return SupernetSpec(
        anchors=tuple(anchors), space=space, space_params=params,
        adaptation=adaptation, input=inp,
        num_heads_source=_str(d.get("num_heads_source", "file"), "num_heads_source",
                              ("file", "convention", "user")),
        training=training, source=source)


def _with_default_targets(d: Any) -> Any:
    if isinstance(d, dict) and "targets" not in d:
        return {**d, "targets": []}
    return d


def _list(v: Any, path: str) -> list:
    if not isinstance(v, list) or len(v) > 64:
        raise _bad(path, "must be a short list of numbers")
    return v



MAX_STITCH_ID = 1 << 20


def _training(t: Any) -> dict | None:
    """Per-stitch accuracy (a fraction in [0, 1]) and importance (>= 0), finite; the rest free-form."""
    if t is None:
        return None
    if not isinstance(t, dict):
        raise _bad("training", "must be an object or null")
    for key, lo, hi in (("accuracy", 0.0, 1.0), ("importance", 0.0, math.inf)):
        table = t.get(key)
        if table is None:
            continue
        if not isinstance(table, dict) or len(table) > MAX_STITCH_ID:
            raise _bad(f"training.{key}", "must be an object {stitch id: number}")
        for sid, v in table.items():
            if not (isinstance(sid, str) and sid.isdigit() and int(sid) < MAX_STITCH_ID):
                raise _bad(f"training.{key}", f"has key {sid!r:.40}, not a stitch id")
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
                raise _bad(f"training.{key}.{sid}",
                           f"must be a finite number in [{lo:g}, {hi:g}] or null, got {v!r:.60}")
    return t


def _space_params(space: str, params: dict) -> dict:
    """The stitch space exists and its parameters have the types of its defaults."""
    from .spaces import SPACES, space_names

    names = space_names()
    if space not in names:
        raise _bad("space.name", f"is {space!r:.60}, not a stitch space esta-export knows ({', '.join(names)})")
    defaults = getattr(SPACES[space], "defaults", {}) or {}
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise _bad("space.params", f"has unknown keys {unknown[:4]} for space {space} (allowed: {sorted(defaults)})")
    out = {}
    for k, v in params.items():
        want = defaults[k]
        if isinstance(want, bool):
            out[k] = _bool(v, f"space.params.{k}")
        elif isinstance(want, int):
            out[k] = _int(v, f"space.params.{k}", 0, 1024)
        elif isinstance(want, float):
            out[k] = _num(v, f"space.params.{k}")
        else:
            out[k] = _str(v, f"space.params.{k}")
    return out


def _cross_check(anchors: list[AnchorConfig], inp: InputSpec | None) -> None:
    """Facts two fields must agree on: every anchor sees the same tokens and predicts the same
    classes; the input spec matches them; labels name every class."""
    a0 = anchors[0]
    for i, a in enumerate(anchors[1:], 1):
        for key in ("img_size", "patch_size", "in_chans", "num_classes"):
            if getattr(a, key) != getattr(a0, key):
                raise _bad(f"anchors[{i}].{key}", f"({getattr(a, key)}) differs from anchors[0].{key} "
                                                  f"({getattr(a0, key)}); stitched anchors must share it")
    if inp is not None:
        if inp.image_size != a0.img_size:
            raise _bad("input.image_size", f"({inp.image_size}) differs from the anchors' img_size ({a0.img_size})")
        if inp.in_chans != a0.in_chans:
            raise _bad("input.in_chans", f"({inp.in_chans}) differs from the anchors' in_chans ({a0.in_chans})")
        if inp.labels is not None and len(inp.labels) != a0.num_classes:
            raise _bad("input.labels", f"has {len(inp.labels)} labels for {a0.num_classes} classes; "
                                       f"give one label per class")
    if estimated_params(anchors) > MAX_PARAMS:
        raise _bad("anchors", f"describe about {estimated_params(anchors) / 1e9:.0f} billion parameters, "
                              f"more than esta-export builds ({MAX_PARAMS / 1e9:.0f} billion)")


MAX_PARAMS = 4_000_000_000


def estimated_params(anchors) -> int:
    """Parameters the anchors need (within a few percent): checked before anything is allocated,
    so a spec cannot ask for a model far larger than the file that carries it."""
    total = 0
    for a in anchors:
        d, hidden = a.embed_dim, int(a.embed_dim * a.mlp_ratio)
        tokens = (a.img_size // a.patch_size) ** 2 + 1
        block = 4 * d * d + 2 * d * hidden + 9 * d + hidden
        total += a.depth * block + a.in_chans * a.patch_size ** 2 * d + tokens * d + d * (a.num_classes + 3)
    return int(total)
