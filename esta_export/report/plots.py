"""PNG plots (matplotlib Agg, no display needed): the measured front with the FLOPs front over it,
and FLOPs vs latency. Each returns PNG bytes, so the HTML can inline them as data URIs."""

from __future__ import annotations

import io
from typing import Any


def _fig():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt, plt.subplots(figsize=(7, 4.5), dpi=110)


def _png(plt, fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def pareto_plot(sel: dict[str, Any]) -> bytes:
    """Accuracy vs measured latency: every stitch, the measured front, the FLOPs front."""
    plt, (fig, ax) = _fig()
    rows = [s for s in sel["stitches"] if s.get("latency") is not None]
    by = {s["id"]: s for s in rows}
    with_acc = [s for s in rows if s.get("accuracy") is not None]
    meas = [s for s in with_acc if s["latency_source"] == "measured"]
    pred = [s for s in with_acc if s["latency_source"] == "predicted"]
    ax.scatter([s["latency"] for s in meas], [s["accuracy"] for s in meas], s=18, c="#9aa5b1",
               label="stitch (measured)")
    _intervals(ax, meas, sel)
    if pred:
        ax.scatter([s["latency"] for s in pred], [s["accuracy"] for s in pred], s=18,
                   facecolors="none", edgecolors="#9aa5b1", label="stitch (predicted latency)")
    shaky = [s for s in with_acc if s.get("unstable")]
    if shaky:
        ax.scatter([s["latency"] for s in shaky], [s["accuracy"] for s in shaky], marker="x",
                   c="#d97706", s=40, label="unstable latency (CV above threshold)")
    front = [by[i] for i in sel.get("front", []) if i in by]
    if front:
        front.sort(key=lambda s: s["latency"])
        ax.plot([s["latency"] for s in front], [s["accuracy"] for s in front], "-o", c="#1d4ed8",
                ms=5, label="Pareto front by measured latency")
    tied = [s for s in with_acc if s.get("on_front") and s.get("tie_with")]
    if tied:
        ax.scatter([s["latency"] for s in tied], [s["accuracy"] for s in tied], s=60, marker="D",
                   facecolors="none", edgecolors="#7c3aed",
                   label="on the front as a tie (intervals overlap a dominating stitch)")
    ff = sorted((by[i] for i in sel.get("flops_front", []) if i in by), key=lambda s: s["flops"])
    if ff:
        ax.plot([s["latency"] for s in ff], [s["accuracy"] for s in ff], "--s", c="#dc2626",
                ms=4, mfc="none", label="Pareto front by FLOPs (at its measured latency)")
    sel_ids = set(sel.get("selected", []))
    chosen = [by[i] for i in sel_ids if i in by and by[i].get("accuracy") is not None]
    if chosen:
        ax.scatter([s["latency"] for s in chosen], [s["accuracy"] for s in chosen], s=90,
                   facecolors="none", edgecolors="#16a34a", linewidths=1.5, label="selected")
    ax.set_xlabel(f"latency, {sel.get('latency_metric', 'median')} (ms, batch {sel.get('batch')})")
    ax.set_ylabel("top-1 accuracy")
    ax.set_title(f"{sel.get('target')}: accuracy vs measured latency")
    ax.grid(alpha=0.3)
    if not with_acc:
        ax.text(0.5, 0.5, "no accuracy available", transform=ax.transAxes, ha="center")
    ax.legend(fontsize=7, loc="lower right")
    return _png(plt, fig)


def _intervals(ax, rows: list[dict[str, Any]], sel: dict[str, Any]) -> None:
    """Horizontal bars: each measured median's confidence interval (the record's median_ci)."""
    pts = [s for s in rows if isinstance(s.get("latency_ci"), (list, tuple))]
    if not pts:
        return
    lo = [max(s["latency"] - s["latency_ci"][0], 0.0) for s in pts]
    hi = [max(s["latency_ci"][1] - s["latency"], 0.0) for s in pts]
    level = next((s.get("latency_ms", {}).get("ci_level") for s in pts if s.get("latency_ms")), None)
    ax.errorbar([s["latency"] for s in pts], [s["accuracy"] for s in pts], xerr=[lo, hi], fmt="none",
                ecolor="#64748b", elinewidth=0.8, capsize=2, alpha=0.8,
                label=f"{int(round(100 * level)) if level else 95}% interval of the median")


def flops_latency_plot(sel: dict[str, Any]) -> bytes:
    """FLOPs vs measured latency, with Kendall's tau in the title."""
    plt, (fig, ax) = _fig()
    rows = [s for s in sel["stitches"] if s.get("latency") is not None and s.get("flops")]
    giga = max((s["flops"] for s in rows), default=0) >= 1e8
    scale, unit = (1e9, "GFLOPs") if giga else (1e6, "MFLOPs")
    for src, style in (("measured", dict(c="#1d4ed8")),
                       ("predicted", dict(facecolors="none", edgecolors="#1d4ed8"))):
        pts = [s for s in rows if s["latency_source"] == src]
        if pts:
            ax.scatter([s["flops"] / scale for s in pts], [s["latency"] for s in pts], s=18,
                       label=f"{src} latency", **style)
    tau = sel.get("kendall_tau")
    ax.set_title(f"{sel.get('target')}: FLOPs vs latency"
                 + (f" (Kendall tau {tau:.3f}, n={sel.get('kendall_tau_n')})" if tau is not None
                    else ""))
    ax.set_xlabel(unit)
    ax.set_ylabel("latency (ms)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _png(plt, fig)
