"""Image preprocessing from the manifest's input spec, in numpy only.

It reproduces the reference the stitches were validated with: resize to the input size
(bilinear with half-pixel centres, as ``torch.nn.functional.interpolate(mode="bilinear",
align_corners=False)``, or nearest), scale uint8 to [0, 1], normalize by mean/std, HWC -> NCHW.
An image already at the input size is not resampled, so it gives exactly the reference input.
"""

from __future__ import annotations

import numpy as np

from .errors import BundleError


def _resize_bilinear(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    in_h, in_w = img.shape[:2]

    def coords(n_out: int, n_in: int):
        x = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
        x = np.clip(x, 0, n_in - 1)
        lo = np.floor(x).astype(np.int64)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, (x - lo).astype(np.float32)

    y0, y1, wy = coords(out_h, in_h)
    x0, x1, wx = coords(out_w, in_w)
    wy, wx = wy[:, None, None], wx[None, :, None]
    top = img[y0][:, x0] * (1 - wx) + img[y0][:, x1] * wx
    bottom = img[y1][:, x0] * (1 - wx) + img[y1][:, x1] * wx
    return (top * (1 - wy) + bottom * wy).astype(np.float32)


def _resize_nearest(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    in_h, in_w = img.shape[:2]
    ys = np.minimum(((np.arange(out_h) + 0.5) * in_h / out_h).astype(np.int64), in_h - 1)
    xs = np.minimum(((np.arange(out_w) + 0.5) * in_w / out_w).astype(np.int64), in_w - 1)
    return img[ys][:, xs]


def preprocess(image: np.ndarray, spec: dict, resize: str | None = None) -> np.ndarray:
    """HxWxC (uint8 0..255 or float 0..1) or a batch NxHxWxC -> NCHW float32 model input."""
    img = np.asarray(image)
    if img.dtype.kind not in "biuf":
        raise BundleError(f"image holds {img.dtype} values, not pixels",
                          hint="pass an RGB image as a numeric numpy array (H, W, 3)")
    if img.size == 0:
        raise BundleError(f"image of shape {list(img.shape)} has no pixels",
                          hint="pass an RGB image as a numpy array (H, W, 3)")
    if img.dtype.kind == "f" and not np.all(np.isfinite(img)):
        raise BundleError("image holds NaN or infinite values", hint="pass finite pixel values")
    if img.ndim == 4:
        return np.concatenate([preprocess(i, spec, resize) for i in img], axis=0)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] not in (1, 3, 4):
        raise BundleError(f"image of shape {img.shape} is not HxWxC with 1, 3 or 4 channels",
                          hint="pass an RGB image as a numpy array (H, W, 3)")
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    img = img[:, :, :3]
    if img.dtype == np.uint8:
        img = img.astype(np.float32) / 255.0
    else:
        img = img.astype(np.float32)
    size = spec.get("image_size") or spec["shape"][-1]
    out_h, out_w = (size, size) if isinstance(size, int) else tuple(size)
    method = resize or spec.get("resize", "bilinear")
    if img.shape[:2] != (out_h, out_w):
        if method == "nearest":
            img = _resize_nearest(img, out_h, out_w)
        elif method == "bilinear":
            img = _resize_bilinear(img, out_h, out_w)
        else:
            raise BundleError(f"unknown resize method {method!r}", hint="use 'bilinear' or 'nearest'")
    mean = np.asarray(spec.get("mean") or [0.0, 0.0, 0.0], np.float32)
    std = np.asarray(spec.get("std") or [1.0, 1.0, 1.0], np.float32)
    img = (img - mean) / std
    return np.ascontiguousarray(img.transpose(2, 0, 1)[None], dtype=np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)
