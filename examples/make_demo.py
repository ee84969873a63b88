"""Rebuild the demo supernet from nothing, the way a user builds one: pretrain three ViT anchors on
scikit-learn's digits (this script's own step), then ``esta-export stitch`` (SN-Net v1 space, stitching
layers fitted by least squares) and ``esta-export train`` (ESTA); every stitch is evaluated on the
held-out split.

    python examples/make_demo.py            # writes examples/demo/digits-esta.safetensors + digits-val.npz

The family is sized so that latency matters: 48 px inputs in 4 px patches (145 tokens), anchors of
width 32, 128 and 256, so its stitches span well over 10x in batch-1 latency on a CPU, in a file
under 25 MB. Deterministic under --seed. Needs only the installed esta-export dependencies and
scikit-learn (the digits ship inside it, no download).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

# (name, width, heads, pretraining epochs, share of patch tokens each pretraining step runs, peak lr).
# The wide anchor trains on a quarter of its tokens (PatchDropout), which cuts its cost ~4x and
# regularises it on 1,438 images, at a lower learning rate; evaluation and deployment use all 145 tokens.
# Epochs are set so that accuracy rises with width, as it does for DeiT-Ti/S/B: at 20 epochs the
# 32-wide anchor matched the 256-wide one on digits (91.6% vs 94.2% before ESTA, above it after),
# which left a front of one stitch. Ti and S run on one worker while B runs on the other, so S's
# extra epochs cost no wall time (B is the critical path).
ANCHORS = (("Ti", 32, 2, 12, 0.5, 2e-3), ("S", 128, 4, 20, 0.5, 2e-3), ("B", 256, 8, 24, 0.25, 1e-3))
DEPTH, MLP_RATIO, IMAGE, PATCH = 6, 2.0, 48, 4
VAL_SPLIT = 0.2


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "examples" / "demo"), help="output folder")
    p.add_argument("--work", default=None, help="keep the anchors and the stitched supernet here (default: a temp folder)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--esta-epochs", type=int, default=5)
    p.add_argument("--esta-lr", type=float, default=5e-4,
                   help="ESTA's learning rate (1e-3 cost the anchors 4-5 points of top-1 in 5 epochs)")
    p.add_argument("--esta-token-keep", type=float, default=0.5,
                   help="share of patch tokens each ESTA step runs (evaluation uses all)")
    p.add_argument("--epochs-scale", type=float, default=1.0, help="multiply every anchor's pretraining epochs")
    p.add_argument("--workers", type=int, default=2, help="anchors pretrained in parallel (one thread each)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads of the stitch and train commands")
    p.add_argument("-q", "--quiet", action="store_true")
    args = p.parse_args(argv)

    from sklearn.datasets import load_digits

    t0 = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = None if args.work else tempfile.TemporaryDirectory(prefix="esta-demo-")
    work = Path(args.work or tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    print(f"load average {' '.join(f'{v:.1f}' for v in os.getloadavg())} on {os.cpu_count()} CPUs")

    # The task data as a user has it: raw images (8x8, values 0..1) and labels in one .npz.
    digits = load_digits()                       # 1797 images, 8x8, values 0..16
    data_npz = work / "digits.npz"
    np.savez_compressed(data_npz, x=(digits.images / 16.0).astype(np.float32), y=digits.target.astype(np.int64),
                        labels=np.array([str(i) for i in range(10)]))

    # 1. Pretrain the anchors (on the training split only) and save each as a timm model folder.
    jobs = [(name, width, heads, max(1, round(epochs * args.epochs_scale)), keep, lr, args.seed + i, args.seed,
             str(work / name), str(data_npz)) for i, (name, width, heads, epochs, keep, lr) in enumerate(ANCHORS)]
    # An anchor already in --work (same settings, recorded in its done.json) is reused, not retrained.
    todo = [j for j in jobs if _done(Path(j[8])) != _settings(j)]
    order = sorted(todo, key=lambda j: -j[1] * j[1] * j[3] * j[4])          # longest first
    if todo and not args.quiet:
        print("pretraining " + ", ".join(j[0] for j in order), flush=True)
    with ProcessPoolExecutor(max_workers=max(1, min(args.workers, len(order) or 1))) as pool:
        results = dict(zip([j[0] for j in order], pool.map(pretrain_job, order)))
    for name, *_ in ANCHORS:
        r = results.get(name) or {**json.loads((work / name / "done.json").read_text()), "reused": True}
        print(f"pretrained {name} (width {r['width']}, {r['epochs']} epochs, token keep {r['keep']}): "
              f"val top-1 {r['val_top1']:.4f} in {r['seconds']:.0f} s{' (reused from --work)' if r.get('reused') else ''}")
    print(f"[{time.perf_counter() - t0:.0f} s]")

    # 2. Stitch them, as a user stitches timm anchors.
    stitched = work / "digits-stitched.safetensors"
    esta(["stitch", *[str(work / n) for n, *_ in ANCHORS], "--space", "snnet_v1", "--out", str(stitched),
          "--data", str(data_npz), "--val-split", str(VAL_SPLIT), "--seed", str(args.seed), "--names", "Ti,S,B",
          "--threads", str(args.threads)] + (["-q"] if args.quiet else []))
    print(f"[{time.perf_counter() - t0:.0f} s]")

    # 3. ESTA: shared LoRA, per-stitch biases, importance-sampled stitches.
    target = out / "digits-esta.safetensors"
    esta(["train", str(stitched), "--data", str(data_npz), "--out", str(target), "--epochs", str(args.esta_epochs),
          "--batch-size", "32", "--lr", str(args.esta_lr), "--lora-rank", "4", "--val-split", str(VAL_SPLIT),
          "--seed", str(args.seed), "--token-keep", str(args.esta_token_keep), "--name", "sklearn-digits",
          "--checkpoint", str(work / "esta.ckpt"), "--threads", str(args.threads)] + (["-q"] if args.quiet else []))

    # The held-out split, preprocessed exactly as the supernet expects (for --val-data / --calibration).
    from esta_export.fsutil import atomic_path
    from esta_export.supernet.formats import load_supernet
    from esta_export.train import load_data

    spec = load_supernet(target).spec
    inp = spec.input_spec
    data = load_data(data_npz, IMAGE, val_split=VAL_SPLIT, seed=args.seed, mean=inp.mean, std=inp.std)
    with atomic_path(out / "digits-val.npz", suffix=".npz") as tmp_npz:
        np.savez_compressed(tmp_npz, x=data.x_val.numpy().astype(np.float32), y=data.y_val.numpy().astype(np.int64))
    acc = spec.training["accuracy"]
    size = target.stat().st_size
    print(f"ESTA: {len(acc)} stitches, val top-1 {min(acc.values()):.4f}..{max(acc.values()):.4f}; "
          f"file {size / 1e6:.2f} MB  [{time.perf_counter() - t0:.0f} s total]")
    print(f"load average {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    if tmp is not None:
        tmp.cleanup()
    return 0


def esta(argv: list[str]) -> None:
    """Run an esta-export command exactly as a user types it (a fresh process)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    print("$ esta-export " + " ".join(argv), flush=True)
    subprocess.run([sys.executable, "-m", "esta_export", *argv], check=True, env=env)


def _settings(job) -> dict:
    name, width, heads, epochs, keep, lr, seed, split_seed, _, _ = job
    return {"name": name, "width": width, "heads": heads, "epochs": epochs, "keep": keep, "lr": lr, "seed": seed,
            "split_seed": split_seed, "depth": DEPTH, "mlp_ratio": MLP_RATIO, "image": IMAGE, "patch": PATCH}


def _done(folder: Path) -> dict | None:
    try:
        return json.loads((folder / "done.json").read_text())["settings"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def pretrain_job(job) -> dict:
    """Pretrain one anchor on the training split; write it as timm writes a model folder."""
    name, width, heads, epochs, keep, lr, seed, split_seed, folder, data_npz = job
    import torch
    from safetensors.torch import save_file

    from esta_export.supernet import AnchorConfig
    from esta_export.train import load_data
    from esta_export.train.pretrain import accuracy, pretrain_anchor

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    data = load_data(data_npz, IMAGE, val_split=VAL_SPLIT, seed=split_seed)    # the split stitch and train use
    cfg = AnchorConfig(name, width, DEPTH, heads, mlp_ratio=MLP_RATIO, patch_size=PATCH, img_size=IMAGE,
                       num_classes=data.num_classes)
    anchor = pretrain_anchor(cfg, data.x_train, data.y_train, epochs=epochs, batch_size=32, lr=lr, token_keep=keep,
                             seed=seed, quiet=True)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in anchor.state_dict().items()}, str(folder / "model.safetensors"))
    config = {   # timm's config.json layout (timm.models.save_for_hf)
        "architecture": f"vit_digits_{name.lower()}_patch{PATCH}_{IMAGE}",
        "num_classes": data.num_classes, "num_features": width, "global_pool": "token",
        "model_args": {"embed_dim": width, "depth": DEPTH, "num_heads": heads, "mlp_ratio": MLP_RATIO,
                       "patch_size": PATCH, "img_size": IMAGE, "num_classes": data.num_classes},
        "label_names": list(data.labels),
        "pretrained_cfg": {"input_size": [3, IMAGE, IMAGE], "fixed_input_size": True, "interpolation": "bilinear",
                           "crop_pct": 1.0, "mean": list(data.mean), "std": list(data.std),
                           "num_classes": data.num_classes, "first_conv": "patch_embed.proj", "classifier": "head"},
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    result = {"width": width, "epochs": epochs, "keep": keep, "seconds": time.perf_counter() - t0,
              "val_top1": accuracy(anchor, data.x_val, data.y_val)}
    (folder / "done.json").write_text(json.dumps({**result, "settings": _settings(job)}))
    return result


if __name__ == "__main__":
    raise SystemExit(main())
