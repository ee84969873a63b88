"""Resumable training checkpoints without pickle.

A checkpoint is a folder: ``model.safetensors`` (a native supernet file, loadable on its own),
``optimizer.safetensors`` (the optimizer's tensors) and ``state.json`` (step, epoch, optimizer
hyper-parameters, sampler scores and RNG state, settings, data fingerprint). It is written into a
temporary folder and renamed into place, so a crash leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..errors import TrainingError
from ..fsutil import atomic_write_json
from ..supernet.formats import save_supernet
from ..supernet.model import Supernet

FORMAT = "esta-export/train-checkpoint"
VERSION = 1


def save_checkpoint(folder: Path, model: Supernet, optimizer: torch.optim.Optimizer, state: dict) -> None:
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        save_supernet(model, tmp / "model.safetensors")
        opt = optimizer.state_dict()
        tensors, layout = {}, {}
        for pid, st in opt["state"].items():
            layout[str(pid)] = {}
            for name, value in st.items():
                if torch.is_tensor(value):
                    tensors[f"{pid}.{name}"] = value.detach().contiguous().cpu()
                    layout[str(pid)][name] = "tensor"
                else:
                    layout[str(pid)][name] = value
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        atomic_write_json(tmp / "state.json", {"format": FORMAT, "version": VERSION, **state,
                                               "optimizer": {"param_groups": opt["param_groups"], "state": layout}})
        old = folder.with_name(folder.name + ".old")
        if folder.exists():
            if old.exists():
                shutil.rmtree(old)
            os.replace(folder, old)
        os.replace(tmp, folder)
        if old.exists():
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def checkpoint_folder(folder: Path) -> Path:
    """The folder to resume from (the previous one if a crash hit between the two renames)."""
    folder = Path(folder)
    if (folder / "state.json").is_file():
        return folder
    old = folder.with_name(folder.name + ".old")
    if (old / "state.json").is_file():
        return old
    raise TrainingError(f"no training checkpoint in {folder}",
                        hint="give the folder that 'esta-export train --checkpoint' wrote (it holds state.json)")


def read_state(folder: Path) -> dict:
    try:
        state = json.loads((folder / "state.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise TrainingError(f"cannot read {folder / 'state.json'} ({err})",
                            hint="the checkpoint is damaged; start training again") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise TrainingError(f"{folder} is not an esta-export training checkpoint",
                            hint="give the folder that 'esta-export train --checkpoint' wrote")
    if state.get("version", 0) > VERSION:
        raise TrainingError(f"checkpoint version {state.get('version')} is newer than this esta-export reads",
                            hint="upgrade esta-export")
    return state


def load_optimizer(folder: Path, optimizer: torch.optim.Optimizer, state: dict) -> None:
    tensors = load_file(str(folder / "optimizer.safetensors"))
    opt_state = {}
    for pid, layout in state["optimizer"]["state"].items():
        opt_state[int(pid)] = {name: tensors[f"{pid}.{name}"] if v == "tensor" else v for name, v in layout.items()}
    try:
        optimizer.load_state_dict({"state": opt_state, "param_groups": state["optimizer"]["param_groups"]})
    except (ValueError, KeyError) as err:
        raise TrainingError(f"the checkpoint's optimizer state does not fit this supernet ({err})",
                            hint="resume with the same supernet and settings, or start again") from None
