"""What ``esta-export inspect`` shows: anchors, space, and per stitch id/route/FLOPs/params/accuracy."""

from __future__ import annotations

from .flops import stitch_flops, stitch_params
from .supernet.formats import LoadedSupernet


def describe(loaded: LoadedSupernet) -> dict:
    spec = loaded.spec
    training = spec.training or {}
    acc, imp = training.get("accuracy") or {}, training.get("importance") or {}
    ad = spec.adaptation
    return {
        "file": str(loaded.path), "sha256": loaded.sha256, "format": loaded.source_format,
        "notes": loaded.notes,
        "anchors": [a.to_json() for a in spec.anchors],
        "num_heads_source": spec.num_heads_source,
        "space": {"name": spec.space, "params": spec.space_params, "num_stitches": len(loaded.model.space)},
        "adaptation": {"lora": None if ad.lora is None else {"rank": ad.lora.rank, "alpha": ad.lora.alpha,
                                                             "targets": list(ad.lora.targets)},
                       "stitch_lora": None if ad.stitch_lora is None else {"rank": ad.stitch_lora.rank,
                                                                           "alpha": ad.stitch_lora.alpha},
                       "stitch_bias": ad.stitch_bias},
        "input": spec.to_json()["input"],
        "training": {k: v for k, v in training.items() if k not in ("accuracy", "importance")} or None,
        "stitches": [
            {"id": s.id, "route": s.route(spec.names), "depth": s.depth,
             "flops": stitch_flops(spec.anchors, s), "params": stitch_params(spec.anchors, s),
             "accuracy": acc.get(str(s.id)), "importance": imp.get(str(s.id))}
            for s in loaded.model.space.stitches
        ],
    }


def format_table(desc: dict) -> str:
    lines = [f"file      {desc['file']}  ({desc['format']})"]
    for note in desc["notes"]:
        lines.append(f"note      {note}")
    for a in desc["anchors"]:
        lines.append(f"anchor    {a['name']:<4} width {a['embed_dim']:<5} depth {a['depth']:<3} heads {a['num_heads']:<3} "
                     f"patch {a['patch_size']} image {a['img_size']} classes {a['num_classes']} ({a['style']})")
    sp = desc["space"]
    lines.append(f"space     {sp['name']} {sp['params'] or ''}: {sp['num_stitches']} stitches")
    ad = desc["adaptation"]
    if ad["lora"] or ad["stitch_lora"] or ad["stitch_bias"]:
        lines.append(f"adapt     LoRA {ad['lora']}, stitch LoRA {ad['stitch_lora']}, per-stitch bias {ad['stitch_bias']}")
    if desc.get("training"):
        t = desc["training"]
        lines.append(f"training  {', '.join(f'{k}={v}' for k, v in t.items() if not isinstance(v, (dict, list)))}")
    # GFLOPs for ImageNet-sized families, MFLOPs for small ones (the demo runs ~1-15 MFLOPs).
    giga = max((s["flops"] for s in desc["stitches"]), default=0) >= 1e9
    unit, scale = ("GFLOPs", 1e9) if giga else ("MFLOPs", 1e6)
    has_acc = any(s["accuracy"] is not None for s in desc["stitches"])
    has_imp = any(s["importance"] is not None for s in desc["stitches"])
    head = f"{'id':>4}  {'route':<28} {unit:>9} {'params(M)':>10}"
    head += f" {'top-1':>7}" if has_acc else ""
    head += f" {'importance':>10}" if has_imp else ""
    lines += ["", head]
    for s in desc["stitches"]:
        row = f"{s['id']:>4}  {s['route']:<28} {s['flops'] / scale:>9.3f} {s['params'] / 1e6:>10.3f}"
        if has_acc:
            row += f" {s['accuracy'] * 100:>6.2f}%" if s["accuracy"] is not None else f" {'-':>7}"
        if has_imp:
            row += f" {s['importance']:>10.4f}" if s["importance"] is not None else f" {'-':>10}"
        lines.append(row)
    return "\n".join(lines)
