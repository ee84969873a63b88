"""Training data: an image folder (one sub-folder per class) or an .npz with ``x`` and ``y``.

Everything ends as float32 NCHW tensors at the supernet's image size, normalised with a per-channel
mean/std (computed on the training split unless given), split into train/validation by a seeded,
class-stratified shuffle. The mean/std, size and label names go into the supernet's input spec, so
export, evaluation and the bundle preprocess exactly as training did.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import TrainingError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


@dataclass
class DataSplits:
    """Preprocessed train/validation tensors and what is needed to preprocess identically later."""

    name: str
    source: str                       # "image-folder" | "npz" | "arrays"
    x_train: torch.Tensor             # float32 [N, C, H, W], normalised
    y_train: torch.Tensor             # int64 [N]
    x_val: torch.Tensor
    y_val: torch.Tensor
    labels: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_size: int
    fingerprint: str                  # sha256 of the raw data and split settings (resume checks it)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def input_spec(self):
        from ..supernet.spec import InputSpec
        return InputSpec(image_size=self.image_size, mean=self.mean, std=self.std, labels=self.labels,
                         in_chans=int(self.x_train.shape[1]))

    def summary(self) -> dict:
        return {"name": self.name, "source": self.source, "num_classes": self.num_classes,
                "train_size": int(self.y_train.numel()), "val_size": int(self.y_val.numel())}


def load_data(path: str | Path, image_size: int, *, in_chans: int = 3, val_split: float = 0.2, seed: int = 0,
              mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
              name: str | None = None) -> DataSplits:
    """Read ``path`` (folder or .npz), resize to ``image_size`` and split. Errors are TrainingErrors."""
    path = Path(path)
    if not path.exists():
        raise TrainingError(f"training data not found: {path}",
                            hint="give an image folder (one sub-folder per class) or an .npz with x and y")
    if path.is_dir():
        x, y, labels = _read_image_folder(path, in_chans)
        source = "image-folder"
    elif path.suffix == ".npz":
        from ..fsutil import check_input_file
        check_input_file(path, "training data", error=TrainingError,
                         hint="give an image folder (one sub-folder per class) or an .npz with x and y")
        x, y, labels = _read_npz(path)
        source = "npz"
    else:
        raise TrainingError(f"{path} is neither a folder nor an .npz file",
                            hint="give an image folder (one sub-folder per class) or an .npz with x and y")
    return from_arrays(x, y, image_size, labels=labels, in_chans=in_chans, val_split=val_split, seed=seed,
                       mean=mean, std=std, name=name or path.stem or path.name, source=source, where=str(path))


def from_arrays(x: np.ndarray, y: np.ndarray, image_size: int, *, labels: Sequence[str] | None = None,
                in_chans: int = 3, val_split: float = 0.2, seed: int = 0, mean: Sequence[float] | None = None,
                std: Sequence[float] | None = None, name: str = "arrays", source: str = "arrays",
                where: str = "the arrays") -> DataSplits:
    """Build splits from in-memory images ``x`` (N,H,W[,C], uint8 0-255 or float 0-1) and labels ``y``."""
    x = _as_nhwc(x, where)
    y = _as_labels(y, len(x), where)
    num_classes = int(y.max()) + 1
    if labels is None:
        labels = tuple(str(i) for i in range(num_classes))
    labels = tuple(str(s) for s in labels)
    if len(labels) < num_classes:
        raise TrainingError(f"{where}: {len(labels)} label names for {num_classes} classes",
                            hint="give one name per class (labels 0..K-1)")
    if len(labels) < 2:
        raise TrainingError(f"{where}: only one class", hint="a classifier needs at least two classes")
    if not 0.0 < val_split < 1.0:
        raise TrainingError(f"validation split must be between 0 and 1, got {val_split}",
                            hint="use e.g. --val-split 0.2")
    fingerprint = hashlib.sha256(x.tobytes() + y.tobytes()
                                 + f"{image_size}/{in_chans}/{val_split}/{seed}".encode()).hexdigest()
    images = _to_tensor(x, image_size, in_chans, where)
    train_idx, val_idx = stratified_split(y, val_split, seed)
    if len(train_idx) == 0 or len(val_idx) == 0:
        raise TrainingError(f"{where}: {len(y)} images are too few for a {val_split:g} validation split",
                            hint="add images or change --val-split")
    if mean is None or std is None:
        tr = images[torch.from_numpy(train_idx)]
        mean = tuple(float(v) for v in tr.mean(dim=(0, 2, 3))) if mean is None else mean
        std = tuple(max(float(v), 1e-6) for v in tr.std(dim=(0, 2, 3))) if std is None else std
    mean, std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
    if len(mean) != in_chans or len(std) != in_chans or min(std) <= 0:
        raise TrainingError(f"mean and std need {in_chans} values each (std > 0), got {mean} and {std}",
                            hint="give one value per channel, e.g. --mean 0.5,0.5,0.5")
    images = (images - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    yt = torch.from_numpy(y)
    tri, vai = torch.from_numpy(train_idx), torch.from_numpy(val_idx)
    return DataSplits(name=name, source=source, x_train=images[tri].contiguous(), y_train=yt[tri],
                      x_val=images[vai].contiguous(), y_val=yt[vai], labels=labels, mean=mean, std=std,
                      image_size=image_size, fingerprint=fingerprint)


def stratified_split(y: np.ndarray, val_split: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per class, a seeded shuffle puts round(val_split * n) images (at least one if n > 1) in validation."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        n_val = int(round(val_split * len(idx)))
        n_val = min(max(n_val, 1 if len(idx) > 1 else 0), len(idx) - 1) if len(idx) > 1 else 0
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


# -- readers ----------------------------------------------------------------------------------------
def _read_image_folder(root: Path, in_chans: int) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    from PIL import Image, UnidentifiedImageError

    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise TrainingError(f"{root} holds {len(classes)} class folder(s)",
                            hint="put the images of each class in their own sub-folder (at least two)")
    images, labels, size = [], [], None
    for c, cls in enumerate(classes):
        files = sorted(p for p in (root / cls).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise TrainingError(f"class folder {root / cls} holds no images",
                                hint=f"add images ({', '.join(IMAGE_EXTENSIONS)}) or remove the folder")
        for f in files:
            try:
                with Image.open(f) as im:
                    im = im.convert("L" if in_chans == 1 else "RGB")
                    # Stack at the first image's size; the final resize to the model's size is in torch.
                    size = size or im.size
                    if im.size != size:
                        im = im.resize(size, Image.BILINEAR)
                    images.append(np.asarray(im, dtype=np.uint8))
            except (UnidentifiedImageError, OSError) as err:
                raise TrainingError(f"cannot read image {f} ({err})", hint="remove or replace the file") from None
            labels.append(c)
    return np.stack(images), np.asarray(labels, dtype=np.int64), tuple(classes)


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[str, ...] | None]:
    import zipfile
    if not zipfile.is_zipfile(path):     # else np.load would take it for a pickle
        raise TrainingError(f"{path} is not a readable .npz file (not a zip archive)",
                            hint="write it with numpy.savez")
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = set(z.files)
            if not {"x", "y"} <= keys:
                raise TrainingError(f"{path} lacks array(s) {sorted({'x', 'y'} - keys)}",
                                    hint="save images as x (N,H,W[,C]) and integer labels as y (N)")
            x, y = z["x"], z["y"]
            labels = tuple(str(s) for s in z["labels"]) if "labels" in keys else None
    except TrainingError:
        raise
    except ValueError as err:   # object arrays need pickle, which is refused
        raise TrainingError(f"{path} holds arrays that need pickle ({err})",
                            hint="save plain numeric arrays (np.savez with numeric x and y)") from None
    except (OSError, EOFError, Exception) as err:  # zipfile.BadZipFile and friends
        raise TrainingError(f"{path} is not a readable .npz file ({err})",
                            hint="write it with numpy.savez") from None
    return x, y, labels


def _as_nhwc(x: np.ndarray, where: str) -> np.ndarray:
    if not isinstance(x, np.ndarray) or x.dtype.kind not in "uif":
        raise TrainingError(f"{where}: images must be a numeric array, got {getattr(x, 'dtype', type(x))}",
                            hint="store x as uint8 (0-255) or float (0-1)")
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3, 4) or min(x.shape) == 0:
        raise TrainingError(f"{where}: images have shape {tuple(x.shape)}, expected (N,H,W) or (N,H,W,C) "
                            "with C in 1, 3, 4", hint="store images channels-last")
    x = x.astype(np.float32) / 255.0 if x.dtype.kind in "ui" else x.astype(np.float32)
    if not np.isfinite(x).all():
        raise TrainingError(f"{where}: images contain NaN or infinity", hint="clean the data")
    return x[..., :3] if x.shape[-1] == 4 else x    # drop alpha


def _as_labels(y: np.ndarray, n: int, where: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != n:
        raise TrainingError(f"{where}: labels have shape {tuple(y.shape)}, expected ({n},)",
                            hint="give one integer label per image")
    if y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
        y = y.astype(np.int64)
    if y.dtype.kind not in "ui" or (len(y) and y.min() < 0):
        raise TrainingError(f"{where}: labels must be integers 0..K-1, got dtype {y.dtype}",
                            hint="map class names to 0..K-1 and store the names as 'labels'")
    return y.astype(np.int64)


def _to_tensor(x: np.ndarray, image_size: int, in_chans: int, where: str) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2)
    c = t.shape[1]
    if c != in_chans:
        if c == 1:
            t = t.expand(-1, in_chans, -1, -1)
        elif in_chans == 1:
            t = t.mean(dim=1, keepdim=True)
        else:
            raise TrainingError(f"{where}: images have {c} channels, the supernet takes {in_chans}",
                                hint="convert the images")
    if t.shape[-2:] != (image_size, image_size):
        t = F.interpolate(t, size=(image_size, image_size), mode="bilinear", align_corners=False,
                          antialias=max(t.shape[-2:]) > image_size)
    return t.contiguous().float()
