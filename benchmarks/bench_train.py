"""ESTA adaptation vs SN-Net-style full fine-tuning of the same supernet: trainable parameters, peak
training memory and wall time per epoch, printed as ratios from one run.

    python benchmarks/bench_train.py [--widths 64,128,256] [--depth 6] [--images 512] [--batch 32]

Each mode runs in a fresh subprocess, so its peak memory is its own. Memory method: the resident
set size after building (and, for ESTA, least-squares initialising) the model is read from
``/proc/self/statm``; the kernel's peak mark is then reset (``/proc/self/clear_refs`` = 5) and the
peak (``VmHWM``) read after the epoch (fallback where the reset is not allowed: the process's
``resource.getrusage(RUSAGE_SELF).ru_maxrss``). Training memory = peak - that RSS,
i.e. the memory training itself adds (gradients, optimizer moments, activations kept for backward).
tracemalloc would miss torch's allocations. Both modes train the same stitches on the same batches
(uniform draws from one seed) with Adam; ESTA trains shared LoRA + stitching-layer LoRA + per-stitch
bias rows + heads, full fine-tuning trains every anchor and stitching weight.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from esta_export.profiling.memory import _reset_peak, _status_kb  # noqa: E402  (the profiler's /proc readers)


def _rss_kib() -> int:
    return _status_kb("VmRSS") or 0


def _peak_kib() -> int:
    return _status_kb("VmHWM") or 0


def run_mode(mode: str, widths: list[int], depth: int, images: int, batch: int, threads: int) -> dict:
    import numpy as np
    import torch
    import torch.nn.functional as F

    from esta_export.supernet import AnchorConfig, Supernet, SupernetSpec
    from esta_export.train import TrainConfig, Trainer, from_arrays, prepare
    from esta_export.train.adapt import full_finetune_params

    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    data = from_arrays(rng.uniform(0, 1, (images, 32, 32, 3)).astype(np.float32), rng.integers(0, 10, images), 32,
                       val_split=0.1, seed=0)
    anchors = tuple(AnchorConfig(f"a{i}", w, depth, max(1, w // 32), patch_size=8, img_size=32, num_classes=10)
                    for i, w in enumerate(widths))
    torch.manual_seed(0)
    model = Supernet(SupernetSpec(anchors, "snnet_v1"))
    cfg = TrainConfig(epochs=1, batch_size=batch, lr=1e-4, lora_rank=8, quiet=True)
    if mode == "esta":
        model, _ = prepare(model, data, cfg)
        trainer = Trainer(model, cfg)
        params = trainer.groups.all

        def step(x, y, sid):
            trainer.step(x, y, sid)
    else:
        params = full_finetune_params(model)
        opt = torch.optim.Adam(params, lr=cfg.lr)

        def step(x, y, sid):
            model.train()
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x, sid), y).backward()
            opt.step()
    trainable = sum(p.numel() for p in params)
    total = sum(p.numel() for p in model.parameters())
    ids = model.space.ids
    draws = np.random.default_rng(1).choice(ids, size=(len(data.y_train) + batch - 1) // batch)
    base = _rss_kib()            # before any gradient or optimizer state exists
    hwm_reset = _reset_peak()    # so that model building and LS initialisation do not count
    step(data.x_train[:batch], data.y_train[:batch], int(draws[0]))          # warm-up, not timed
    t0 = time.perf_counter()
    for b, sid in enumerate(draws):
        sl = slice(b * batch, (b + 1) * batch)
        step(data.x_train[sl], data.y_train[sl], int(sid))
    epoch_s = time.perf_counter() - t0
    peak = _peak_kib() if hwm_reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"mode": mode, "trainable_params": trainable, "total_params": total, "epoch_s": epoch_s,
            "peak_rss_kib": peak, "rss_before_kib": base, "steps": len(draws),
            "memory_method": "VmHWM after clear_refs" if hwm_reset else "ru_maxrss"}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--widths", default="64,128,256")
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--mode", choices=("esta", "full"), help=argparse.SUPPRESS)
    a = p.parse_args()
    widths = [int(w) for w in a.widths.split(",")]
    if a.mode:
        print(json.dumps(run_mode(a.mode, widths, a.depth, a.images, a.batch, a.threads)))
        return 0
    res = {}
    for mode in ("esta", "full"):
        out = subprocess.run([sys.executable, __file__, "--mode", mode, "--widths", a.widths, "--depth", str(a.depth),
                              "--images", str(a.images), "--batch", str(a.batch), "--threads", str(a.threads)],
                             check=True, capture_output=True, text=True)
        res[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    e, f = res["esta"], res["full"]
    print(f"supernet: widths {widths}, depth {a.depth}, {e['total_params']:,} parameters (ESTA file) / "
          f"{f['total_params']:,} (plain); one epoch = {e['steps']} steps of {a.batch} images, {a.threads} thread(s)")
    print(f"{'':<24}{'ESTA':>14}{'full fine-tune':>16}{'ESTA / full':>13}")
    print(f"{'trainable parameters':<24}{e['trainable_params']:>14,}{f['trainable_params']:>16,}"
          f"{e['trainable_params'] / f['trainable_params']:>13.3f}")
    de, df = e["peak_rss_kib"] - e["rss_before_kib"], f["peak_rss_kib"] - f["rss_before_kib"]
    print(f"{'training memory (MiB)':<24}{de / 1024:>14.1f}{df / 1024:>16.1f}{de / max(df, 1):>13.3f}")
    print(f"{'peak RSS (MiB)':<24}{e['peak_rss_kib'] / 1024:>14.1f}{f['peak_rss_kib'] / 1024:>16.1f}"
          f"{e['peak_rss_kib'] / f['peak_rss_kib']:>13.3f}")
    print(f"{'wall time / epoch (s)':<24}{e['epoch_s']:>14.2f}{f['epoch_s']:>16.2f}{e['epoch_s'] / f['epoch_s']:>13.3f}")
    print(f"memory: peak RSS during training ({e['memory_method']}) minus RSS after building the model; "
          "one fresh process per mode; peak RSS includes the torch runtime (~0.4 GiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
