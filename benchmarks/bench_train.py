"""ESTA against direct adaptation of the stitched family (issue 15), one run: same anchors, data,
epochs, batches and seed for three training modes:

  esta          ESTA one-stage as built: anchors frozen, shared LoRA, per-stitch biases, stitching-layer
                LoRA, heads; stitches drawn by training-time importance (0.3 uniform floor)
  snnet         SN-Net's direct adaptation: the stitched family fine-tuned in full (every anchor and
                stitching weight trains), stitches drawn uniformly
  esta-uniform  ESTA without importance sampling (floor 1.0: uniform draws)

    python benchmarks/bench_train.py [--epochs 10] [--pretrain-epochs 25] [--plot docs/train_fronts.png]
    python benchmarks/bench_train.py --memory-only            # the memory table alone, anchors not pretrained
    python benchmarks/bench_train.py --scale deit [--batch 8] [--steps 4]   # memory on a DeiT-Ti/S/B-sized family
    python benchmarks/bench_train.py --importance OUT/select/cpu.json --supernet SUPERNET.safetensors

The family: three ViT anchors (widths 64/128/256, depth 6, MLP ratio 2, 32 px in 8 px patches) pretrained here on
scikit-learn's digits (training split only), stitched by the code 'esta-export stitch' runs (SN-Net v1
space, least-squares init on 100 training images): 35 stitches. Every stitch is evaluated on the
held-out split (359 images). Per mode: trained parameters (those that receive gradients; ESTA's per-stitch bias tables count
only the rows of layers each stitch runs, the rest never change) and all tensors set trainable, peak training memory, wall time per
epoch, top-1 of every stitch, and its accuracy-vs-FLOPs front; the fronts are compared at every
budget (each stitch's FLOPs is a budget: the best top-1 a mode offers within it).

Training memory, two views. Tensor accounting (``esta_export.train.memory.StepMemory`` around every
training step; it only observes): activations = the storages autograd saves for backward in a step
(``saved_tensors_hooks``, weights' own storages left out), max over steps; gradients of the trainable
tensors after a step; optimizer state (every tensor in ``optimizer.state``); weights, frozen and
trainable; and ESTA's step copies (``Trainer.step`` clones every bias table to put the other stitches'
rows back). training = states (gradients + optimizer) + activations + copies is a sum of parts, an upper
bound of what a step holds at once (activations are freed during backward while gradients fill in).
Process view: each mode runs in a fresh process; resident set size after building and initialising the
model (``/proc/self/status`` VmRSS), then the kernel's peak mark is reset (``/proc/self/clear_refs`` = 5)
and VmHWM read after the last training step (fallback: ``ru_maxrss``); growth = peak - that RSS. On the
tiny family it is mostly allocator noise (the two ESTA modes hold identical tensors).

``--memory-only``: the digits family with anchors not pretrained (memory depends on shapes, not on
weight values), the three modes trained as above, only the memory table. ``--scale deit``: the same
accounting on DeiT-Ti/S/B-sized anchors (widths 192/384/768, depth 12, heads 3/6/12, 224 px, patch 16,
random init, ``--classes`` heads) stitched as SN-Net v1 by the package's Supernet, ``--steps`` steps of
``--batch`` random images per mode through the pure anchors largest first (B, S, Ti, B: the last step is
the steady state, every anchor's optimizer state present); ESTA (LoRA rank 8) and full fine-tuning only,
since ESTA uniform differs from ESTA only in which stitch a step draws. Memory only, no accuracy.

``--importance`` checks ESTA's importance estimate against deployment (issue 15 item 4): the k
stitches the supernet's training ranks most important vs the k stitches on the measured
accuracy-vs-latency front of a selection (``esta-export select``), k = the front's size.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from esta_export.profiling.memory import _reset_peak, _status_kb  # noqa: E402  (the profiler's /proc readers)
from esta_export.train.memory import StepMemory, tensor_bytes  # noqa: E402

MODES = ("esta", "snnet", "esta-uniform")
WIDTHS, HEADS, DEPTH, MLP, IMAGE, PATCH = (64, 128, 256), (2, 4, 8), 6, 2.0, 32, 8
DEIT_NAMES, DEIT_WIDTHS, DEIT_HEADS, DEIT_DEPTH = ("Ti", "S", "B"), (192, 384, 768), (3, 6, 12), 12
MIB = 1024 * 1024
VAL_SPLIT = 0.2


def _rss_kib() -> int:
    return _status_kb("VmRSS") or 0


def _peak_kib() -> int:
    return _status_kb("VmHWM") or 0


def digits(seed: int):
    from sklearn.datasets import load_digits

    from esta_export.train import from_arrays
    d = load_digits()
    return from_arrays(d.images / 16.0, d.target, IMAGE, val_split=VAL_SPLIT, seed=seed, name="sklearn-digits")


# -- anchors ----------------------------------------------------------------------------------------
def pretrain_anchors(folder: Path, epochs: int, seed: int, quiet: bool) -> list[Path]:
    """Three anchors on the training split, each written as a timm state dict (.safetensors)."""
    import torch
    from safetensors.torch import save_file

    from esta_export.supernet import AnchorConfig
    from esta_export.train.pretrain import accuracy, pretrain_anchor

    data = digits(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (w, h) in enumerate(zip(WIDTHS, HEADS)):
        path = folder / f"anchor{w}.safetensors"
        paths.append(path)
        if path.exists():
            continue
        cfg = AnchorConfig(f"w{w}", w, DEPTH, h, mlp_ratio=MLP, patch_size=PATCH, img_size=IMAGE, num_classes=10)
        torch.manual_seed(seed + i)
        a = pretrain_anchor(cfg, data.x_train, data.y_train, epochs=epochs, seed=seed + i, quiet=True)
        save_file({k: v.contiguous() for k, v in a.state_dict().items()}, str(path))
        if not quiet:
            print(f"  pretrained width {w}: val top-1 {accuracy(a, data.x_val, data.y_val):.4f}", flush=True)
    return paths


# -- one mode (runs in its own process) -------------------------------------------------------------
def run_mode(mode: str, anchors: list[str], epochs: int, batch: int, lr: float, full_lr: float, seed: int,
             threads: int) -> dict:
    import numpy as np
    import torch
    import torch.nn.functional as F

    from esta_export.flops import stitch_flops
    from esta_export.supernet.formats.timm import read_anchor
    from esta_export.train import TrainConfig, Trainer, evaluate_stitches, prepare
    from esta_export.train.adapt import full_finetune_params, trained_param_count
    from esta_export.train.stitch import stitch_anchors
    from esta_export.train.trainer import lr_at

    torch.set_num_threads(threads)
    data = digits(seed)
    files = [read_anchor(a) for a in anchors]
    g = torch.Generator().manual_seed(seed)
    calib = data.x_train[torch.randperm(len(data.y_train), generator=g)[:100]]
    model = stitch_anchors(files, "snnet_v1", calib, num_heads=HEADS, input_spec=data.input_spec()).model
    cfg = TrainConfig(epochs=epochs, batch_size=batch, lr=lr, lora_rank=4, seed=seed, quiet=True,
                      floor=1.0 if mode == "esta-uniform" else 0.3)
    n = len(data.y_train)
    steps = math.ceil(n / batch)
    total = epochs * steps
    draws: dict[int, int] = {}
    if mode == "snnet":
        params = full_finetune_params(model)
        opt = torch.optim.Adam(params, lr=full_lr)
        rng = np.random.default_rng(seed)
        ids = model.space.ids

        def draw():
            return int(rng.choice(ids))

        def step(x, y, k, sid):
            draws[sid] = draws.get(sid, 0) + 1
            model.train()
            for group in opt.param_groups:
                group["lr"] = lr_at(k, total, TrainConfig(lr=full_lr))
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x, sid), y).backward()
            opt.step()
    else:
        model, _ = prepare(model, data, cfg)            # ESTA tensors; LS init as 'esta-export train' does
        trainer = Trainer(model, cfg)
        params = trainer.groups.all
        opt = trainer.optimizer
        draw = trainer.sampler.sample

        def step(x, y, k, sid):
            trainer.step(x, y, sid, lr=lr_at(k, total, cfg))
    trainable = sum(p.numel() for p in params)
    trained = trainable if mode == "snnet" else trained_param_count(model, trainer.groups)
    frozen_total = sum(p.numel() for p in model.parameters())
    meter = StepMemory(model)
    base = _rss_kib()
    hwm_reset = _reset_peak()
    t0 = time.perf_counter()
    k = 0
    for epoch in range(epochs):
        perm = torch.from_numpy(np.random.default_rng([seed, epoch]).permutation(n))
        for b in range(steps):
            idx = perm[b * batch:(b + 1) * batch]
            sid = draw()
            with meter.step(tag=sid):                   # observes the saved tensors; changes nothing
                step(data.x_train[idx], data.y_train[idx], k, sid)
            meter.observe(params, opt)
            k += 1
    train_s = time.perf_counter() - t0
    peak = _peak_kib() if hwm_reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    acc = evaluate_stitches(model, data.x_val, data.y_val)
    out = {"mode": mode, "trainable_params": trainable, "trained_params": trained, "total_params": frozen_total, "epochs": epochs,
           "epoch_s": train_s / epochs, "peak_rss_kib": peak, "rss_before_kib": base, "steps": total,
           "memory_method": "VmHWM after clear_refs" if hwm_reset else "ru_maxrss",
           "lr": full_lr if mode == "snnet" else lr, "tensors": tensor_record(meter, [] if mode == "snnet" else trainer.groups.tables),
           "accuracy": acc, "flops": {str(s.id): stitch_flops(model.spec.anchors, s) for s in model.space.stitches},
           "routes": {str(s.id): model.route(s) for s in model.space.stitches}}
    if mode != "snnet":
        out["importance"] = trainer.sampler.importance()
        out["draws"] = {str(s): int(c) for s, c in zip(trainer.sampler.ids, trainer.sampler.draws)}
    else:
        out["draws"] = {str(s): c for s, c in sorted(draws.items())}
    return out


def tensor_record(meter: StepMemory, copies: list) -> dict:
    """The meter's figures plus the step's own copies (ESTA's step clones every bias table to put the other
    stitches' rows back) and the sums: training memory = states + activations + copies; all = + weights."""
    r = meter.record()
    r["step_copies"] = tensor_bytes(copies)
    r["training"] = r["states"] + r["activations"] + r["step_copies"]
    r["all"] = r["training"] + r["frozen_weights"] + r["trainable_weights"]
    return r


# -- the same accounting on a DeiT-Ti/S/B-sized family (memory only) ---------------------------------
def run_deit_mode(mode: str, batch: int, steps: int, classes: int, lora_rank: int, seed: int, threads: int) -> dict:
    """Random-init DeiT-Ti/S/B anchors (depth 12, 224 px, patch 16) stitched as SN-Net v1 by the package's
    Supernet; ``steps`` training steps on random images through the pure anchors largest first and round
    again (B, S, Ti, B, ...: the second B step runs with every anchor's optimizer state in memory, the steady
    state), the same stitches in every mode. Stitching layers get no gradient in these steps."""
    import torch
    import torch.nn.functional as F

    from esta_export.supernet import AnchorConfig, Supernet, SupernetSpec
    from esta_export.train import TrainConfig, Trainer
    from esta_export.train.adapt import adapt_supernet, full_finetune_params, trained_param_count
    from esta_export.train.stitch import SPACE_PARAMS

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    cfgs = tuple(AnchorConfig(n, w, DEIT_DEPTH, h, patch_size=16, img_size=224, num_classes=classes)
                 for n, w, h in zip(DEIT_NAMES, DEIT_WIDTHS, DEIT_HEADS))
    model = Supernet(SupernetSpec(cfgs, "snnet_v1", space_params=dict(SPACE_PARAMS["snnet_v1"])))
    stitches = model.space.stitches
    pure = sorted((s for s in stitches if not s.layers), key=lambda s: -s.segments[0].anchor)
    order = [s.id for s in pure]
    cfg = TrainConfig(lr=1e-3, lora_rank=lora_rank, seed=seed, quiet=True)
    copies: list = []
    if mode == "snnet":
        params = full_finetune_params(model)
        opt = torch.optim.Adam(params, lr=1e-4)
        trained = sum(p.numel() for p in params)

        def step(x, y, sid):
            model.train()
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x, sid), y).backward()
            opt.step()
    else:
        model, _ = adapt_supernet(model, lora=cfg.lora, stitch_lora=cfg.stitch_lora)
        trainer = Trainer(model, cfg)
        params, opt, copies = trainer.groups.all, trainer.optimizer, trainer.groups.tables
        trained = trained_param_count(model, trainer.groups)

        def step(x, y, sid):
            trainer.step(x, y, sid, lr=cfg.lr)
    meter = StepMemory(model)
    g = torch.Generator().manual_seed(seed)
    base = _rss_kib()
    hwm_reset = _reset_peak()
    times = []
    for k in range(steps):
        sid = order[k % len(order)]
        x = torch.randn(batch, 3, 224, 224, generator=g)
        y = torch.randint(0, classes, (batch,), generator=g)
        t0 = time.perf_counter()
        with meter.step(tag=sid):
            step(x, y, sid)
        meter.observe(params, opt)
        times.append(time.perf_counter() - t0)
    peak = _peak_kib() if hwm_reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"mode": mode, "scale": "deit", "batch": batch, "steps": steps, "stitches_run": [order[k % len(order)] for k in range(steps)],
            "routes": {str(s.id): model.route(s) for s in stitches if s.id in order},
            "stitching_params": sum(p.numel() for lin in model.stitch_linears() for p in lin.parameters()),
            "trainable_params": sum(p.numel() for p in params), "trained_params": trained,
            "total_params": sum(p.numel() for p in model.parameters()), "step_s": times,
            "peak_rss_kib": peak, "rss_before_kib": base,
            "memory_method": "VmHWM after clear_refs" if hwm_reset else "ru_maxrss",
            "tensors": tensor_record(meter, copies)}


def print_memory(res: dict[str, dict], modes: list[str]) -> None:
    """Tensor accounting per mode (MiB) and ESTA / full for each part; the process view last."""
    cols = [m for m in modes if m in res]
    print(f"{'training memory (MiB)':<44}" + "".join(f"{m:>14}" for m in cols) + f"{'ESTA/full':>11}")

    def row(name, fn):
        vals = [fn(res[m]) for m in cols]
        ratio = f"{fn(res['esta']) / fn(res['snnet']):.3f}" if fn(res["snnet"]) else "-"
        print(f"{name:<44}" + "".join(f"{v / MIB:>14.2f}" for v in vals) + f"{ratio:>11}")

    t = lambda key: (lambda r: r["tensors"][key])
    row("weights, frozen", t("frozen_weights"))
    row("weights, trainable", t("trainable_weights"))
    row("gradients of trainable tensors", t("grads"))
    row("optimizer state (Adam moments)", t("optimizer"))
    row("states = gradients + optimizer", t("states"))
    row("activations saved for backward (max/step)", t("activations"))
    row("step copies (ESTA: bias tables put back)", t("step_copies"))
    row("training = states + activations + copies", t("training"))
    row("all tensors = training + weights", t("all"))
    row("process view: peak RSS - RSS after build", lambda r: 1024 * (r["peak_rss_kib"] - r["rss_before_kib"]))
    print("activations peak at stitch " + ", ".join(f"{m}: {res[m]['tensors']['activations_at']}" for m in cols)
          + f"; {', '.join(str(res[m]['tensors']['steps']) for m in cols)} steps observed")


def _check(proc: subprocess.CompletedProcess, mode: str) -> None:
    if proc.returncode:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"mode {mode} failed (exit status {proc.returncode}); its stderr is above")


# -- fronts -----------------------------------------------------------------------------------------
def front(acc: dict[str, float], cost: dict[str, float]) -> list[str]:
    """Stitches no other beats on cost (<=) and accuracy (>=), one strictly; cheapest first."""
    ids = list(acc)
    keep = [i for i in ids if not any(cost[j] <= cost[i] and acc[j] >= acc[i] and (cost[j] < cost[i] or acc[j] > acc[i])
                                      for j in ids)]
    return sorted(keep, key=lambda i: cost[i])


def best_within(acc: dict[str, float], cost: dict[str, float], budget: float) -> float | None:
    within = [acc[i] for i in acc if cost[i] <= budget]
    return max(within) if within else None


def compare_fronts(res: dict[str, dict]) -> dict:
    flops = res["esta"]["flops"]
    budgets = sorted(set(flops.values()))
    table = {m: [best_within(r["accuracy"], flops, b) for b in budgets] for m, r in res.items()}
    mean = {m: sum(v) / len(v) for m, v in table.items()}
    vs = {m: sum(1 for a, d in zip(table[m], table["snnet"]) if a >= d) for m in res}
    return {"budgets": budgets, "best": table, "mean_top1": mean, "at_least_snnet": vs,
            "fronts": {m: front(r["accuracy"], flops) for m, r in res.items()}}


def plot(res: dict[str, dict], cmp: dict, path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"esta": "tab:blue", "snnet": "tab:red", "esta-uniform": "tab:green"}
    labels = {"esta": "ESTA (importance sampling)", "snnet": "SN-Net direct adaptation (full fine-tune)",
              "esta-uniform": "ESTA, uniform sampling"}
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    flops = res["esta"]["flops"]
    for m, r in res.items():
        xs = [flops[i] / 1e6 for i in r["accuracy"]]
        ax.scatter(xs, [100 * a for a in r["accuracy"].values()], s=12, alpha=0.35, color=colors[m])
        ax.step([b / 1e6 for b in cmp["budgets"]], [100 * a for a in cmp["best"][m]], where="post", color=colors[m],
                label=f"{labels[m]}: mean {100 * cmp['mean_top1'][m]:.1f}%")
    ax.set_xlabel("MFLOPs per image (fvcore convention)")
    ax.set_ylabel("held-out top-1 (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


# -- importance vs the deployed front (item 4) ------------------------------------------------------
def importance_check(select_json: Path, supernet: Path) -> dict:
    from esta_export.supernet.formats import load_supernet

    sel = json.loads(Path(select_json).read_text())
    spec = load_supernet(supernet).spec
    imp = {int(k): float(v) for k, v in ((spec.training or {}).get("importance") or {}).items()}
    if not imp:
        raise SystemExit(f"{supernet} records no importance (train it with esta-export train)")
    on_front = [int(i) for i in sel["front"]]
    ids = [int(t["id"]) for t in sel["stitches"] if t.get("latency") is not None and t.get("accuracy") is not None]
    k = len(on_front)
    ranked = sorted(ids, key=lambda i: -imp.get(i, 0.0))
    top = ranked[:k]
    hit = sorted(set(top) & set(on_front))
    from scipy.stats import hypergeom
    p = float(hypergeom.sf(len(hit) - 1, len(ids), k, k)) if hit else 1.0
    return {"stitches": len(ids), "front": sorted(on_front), "top_important": sorted(top), "overlap": hit,
            "overlap_share": len(hit) / k if k else 0.0, "chance_share": k / len(ids) if ids else 0.0,
            "p_value_at_least_this_overlap": p,
            "front_importance_rank": {i: ranked.index(i) + 1 for i in on_front if i in ranked}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--pretrain-epochs", type=int, default=25)
    p.add_argument("--batch", type=int, default=None, help="batch size (default 32; 8 with --scale deit)")
    p.add_argument("--scale", choices=("digits", "deit"), default="digits",
                   help="deit: tensor accounting of training memory on a DeiT-Ti/S/B-sized family (memory only)")
    p.add_argument("--steps", type=int, default=4, help="training steps per mode with --scale deit")
    p.add_argument("--classes", type=int, default=100, help="classes of the heads with --scale deit")
    p.add_argument("--memory-only", action="store_true",
                   help="digits family: anchors not pretrained, only the training-memory table (no accuracy)")
    p.add_argument("--lr", type=float, default=1e-3, help="ESTA learning rate")
    p.add_argument("--full-lr", type=float, default=1e-4,
                   help="full fine-tuning learning rate (lower, as SN-Net fine-tunes pretrained anchors)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--anchors", default=None, help="folder to keep the pretrained anchors in (reused when present)")
    p.add_argument("--plot", default=str(ROOT / "docs" / "train_fronts.png"))
    p.add_argument("--json", default=None, help="write every number of the run here")
    p.add_argument("--importance", metavar="SELECT_JSON", help="check importance vs this measured front")
    p.add_argument("--supernet", help="the supernet the selection was made from (with --importance)")
    p.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    p.add_argument("--anchor-files", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.batch is None:
        a.batch = 8 if a.scale == "deit" else 32
    for name in ("batch", "steps", "classes", "epochs", "threads"):
        if getattr(a, name) < 1:
            p.error(f"--{name} must be at least 1, got {getattr(a, name)}")
    if a.importance:
        r = importance_check(Path(a.importance), Path(a.supernet))
        print(json.dumps(r, indent=1))
        print(f"importance vs measured front: {len(r['overlap'])} of the {len(r['front'])} front stitches are among "
              f"the {len(r['front'])} ESTA ranks most important (share {r['overlap_share']:.2f}; chance "
              f"{r['chance_share']:.2f}; P(overlap >= this | random ranking) = {r['p_value_at_least_this_overlap']:.3f})")
        return 0
    if a.mode and a.scale == "deit":
        print(json.dumps(run_deit_mode(a.mode, a.batch, a.steps, a.classes, 8, a.seed, a.threads)))
        return 0
    if a.mode:
        print(json.dumps(run_mode(a.mode, a.anchor_files.split(","), a.epochs, a.batch, a.lr, a.full_lr, a.seed,
                                  a.threads)))
        return 0
    load = os.getloadavg()
    print(f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on {os.cpu_count()} CPUs", flush=True)
    if a.scale == "deit":
        return deit_main(a, load)
    tmp = None if a.anchors else tempfile.TemporaryDirectory(prefix="bench-train-")
    import torch
    torch.set_num_threads(a.threads)     # two threads on two busy cores spin more than they compute
    t0 = time.perf_counter()
    if a.memory_only and not a.anchors:
        a.pretrain_epochs = 0                        # memory depends on shapes only, not on weight values
    anchors = pretrain_anchors(Path(a.anchors or tmp.name), a.pretrain_epochs, a.seed, quiet=False)
    print(f"anchors ready [{time.perf_counter() - t0:.0f} s]", flush=True)
    res = {}
    for mode in MODES:
        proc = subprocess.run([sys.executable, __file__, "--mode", mode, "--anchor-files", ",".join(map(str, anchors)),
                               "--epochs", str(a.epochs), "--batch", str(a.batch), "--lr", str(a.lr),
                               "--full-lr", str(a.full_lr), "--seed", str(a.seed), "--threads", str(a.threads)],
                              capture_output=True, text=True)
        _check(proc, mode)
        res[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"  {mode}: {res[mode]['epoch_s']:.1f} s/epoch [{time.perf_counter() - t0:.0f} s]", flush=True)
    if a.memory_only:
        print(f"\nfamily: widths {list(WIDTHS)}, depth {DEPTH}, {a.epochs} epochs of batch {a.batch}, seed {a.seed} "
              f"(anchors {'given' if a.anchors else 'not pretrained'}); one fresh process per mode")
        print_memory(res, list(MODES))
        print(f"load average now {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
        if a.json:
            Path(a.json).write_text(json.dumps({"results": res, "load_start": load}, indent=1))
        if tmp is not None:
            tmp.cleanup()
        return 0
    cmp = compare_fronts(res)
    e, f, u = res["esta"], res["snnet"], res["esta-uniform"]
    print(f"\nfamily: widths {list(WIDTHS)}, depth {DEPTH}, {len(e['accuracy'])} stitches (SN-Net v1); digits "
          f"{VAL_SPLIT:.0%} held out; {a.epochs} epochs of batch {a.batch}, seed {a.seed}, {a.threads} thread(s); "
          f"lr ESTA {a.lr:g}, full fine-tune {a.full_lr:g}")
    print(f"{'':<26}{'ESTA':>12}{'SN-Net full':>13}{'ESTA uniform':>14}{'ESTA/full':>11}")
    row = lambda name, fn, fmt: print(f"{name:<26}" + "".join(f"{fmt(fn(r)):>{w}}" for r, w in ((e, 12), (f, 13), (u, 14)))
                                      + f"{fn(e) / max(fn(f), 1e-12):>11.3f}")
    row("trained parameters", lambda r: r["trained_params"], lambda v: f"{v:,}")
    row("  (tensors set trainable)", lambda r: r["trainable_params"], lambda v: f"{v:,}")
    row("process RSS growth (MiB)", lambda r: (r["peak_rss_kib"] - r["rss_before_kib"]) / 1024, lambda v: f"{v:.1f}")
    row("wall time / epoch (s)", lambda r: r["epoch_s"], lambda v: f"{v:.2f}")
    row("mean top-1 over budgets", lambda r: cmp["mean_top1"][r["mode"]], lambda v: f"{100 * v:.2f}%")
    row("best stitch top-1", lambda r: max(r["accuracy"].values()), lambda v: f"{100 * v:.2f}%")
    row("worst stitch top-1", lambda r: min(r["accuracy"].values()), lambda v: f"{100 * v:.2f}%")
    nb = len(cmp["budgets"])
    print(f"budgets where the front is at least as accurate as SN-Net direct adaptation: ESTA "
          f"{cmp['at_least_snnet']['esta']}/{nb}, ESTA uniform {cmp['at_least_snnet']['esta-uniform']}/{nb}")
    print("per-stitch held-out top-1 (%):")
    print(f"{'id':>4} {'route':<16}{'MFLOPs':>8}{'ESTA':>8}{'SN-Net':>8}{'uniform':>8}{'importance':>11}")
    for sid in sorted(e["accuracy"], key=int):
        print(f"{sid:>4} {e['routes'][sid]:<16}{e['flops'][sid] / 1e6:>8.2f}{100 * e['accuracy'][sid]:>8.1f}"
              f"{100 * f['accuracy'][sid]:>8.1f}{100 * u['accuracy'][sid]:>8.1f}{e['importance'][sid]:>11.3f}")
    # Importance vs the accuracy-vs-FLOPs front of the same run (the measured-latency check is --importance).
    fr = cmp["fronts"]["esta"]
    top = sorted(e["importance"], key=lambda i: -e["importance"][i])[:len(fr)]
    print(f"ESTA FLOPs front {fr}; its {len(fr)} most important stitches {sorted(top, key=int)}; overlap "
          f"{len(set(fr) & set(top))}/{len(fr)} (chance {len(fr) / len(e['accuracy']):.2f})")
    print(f"process view of memory: peak RSS during training ({e['memory_method']}) minus RSS after building the "
          f"model; one fresh process per mode. Tensor accounting of the same steps:")
    print_memory(res, list(MODES))
    print(f"load average now {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    if a.plot:
        plot(res, cmp, Path(a.plot), f"digits, {len(e['accuracy'])} stitches, {a.epochs} epochs, seed {a.seed}: "
                                     f"best held-out top-1 within each FLOPs budget")
        print(f"plot: {a.plot}")
    if a.json:
        Path(a.json).write_text(json.dumps({"results": res, "compare": cmp, "load_start": load}, indent=1))
    if tmp is not None:
        tmp.cleanup()
    return 0


def deit_main(a, load) -> int:
    res = {}
    t0 = time.perf_counter()
    for mode in ("esta", "snnet"):            # ESTA uniform differs from ESTA only in which stitch a step draws
        proc = subprocess.run([sys.executable, __file__, "--scale", "deit", "--mode", mode, "--batch", str(a.batch),
                               "--steps", str(a.steps), "--classes", str(a.classes), "--seed", str(a.seed),
                               "--threads", str(a.threads)], capture_output=True, text=True)
        _check(proc, mode)
        res[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
        r = res[mode]
        print(f"  {mode}: steps {' '.join(f'{t:.1f}' for t in r['step_s'])} s [{time.perf_counter() - t0:.0f} s]",
              flush=True)
    e, f = res["esta"], res["snnet"]
    print(f"\nfamily: DeiT-Ti/S/B sized (widths {list(DEIT_WIDTHS)}, depth {DEIT_DEPTH}, heads {list(DEIT_HEADS)}, "
          f"224 px, patch 16, {a.classes} classes, random init), SN-Net v1, stitches run in order: "
          + ", ".join(f"{sid} ({e['routes'][str(sid)]})" for sid in e["stitches_run"])
          + f"; batch {a.batch}, {a.steps} steps per mode, ESTA LoRA rank 8, {a.threads} thread(s)")
    print(f"stitching layers: {f['stitching_params']:,} parameters ({f['stitching_params'] / f['total_params']:.1%} of "
          f"the full family) get no gradient in these steps; their gradients and moments are not in the figures")
    print(f"trained parameters: ESTA {e['trained_params']:,} (tensors set trainable {e['trainable_params']:,}), "
          f"full {f['trained_params']:,}: {e['trained_params'] / f['trained_params']:.3f}")
    print_memory(res, ["esta", "snnet"])
    print(f"load average now {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    if a.json:
        Path(a.json).write_text(json.dumps({"results": res, "load_start": load}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
