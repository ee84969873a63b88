"""Training data: image folders, .npz files, splits, normalisation, and the errors for bad input."""

from __future__ import annotations

import numpy as np
import pytest

from esta_export.errors import EstaError, TrainingError
from esta_export.train.data import from_arrays, load_data, stratified_split


def _write_folder(root, classes=("cat", "dog"), per_class=5, size=(12, 10)):
    from PIL import Image
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def test_image_folder_reads_classes_resizes_and_splits(tmp_path):
    data = load_data(_write_folder(tmp_path / "imgs"), 16, val_split=0.2, seed=1)
    assert data.labels == ("cat", "dog") and data.source == "image-folder" and data.name == "imgs"
    assert data.x_train.shape[1:] == (3, 16, 16) and str(data.x_train.dtype) == "torch.float32"
    assert len(data.y_train) + len(data.y_val) == 10 and sorted(set(data.y_val.tolist())) == [0, 1]
    # Normalised with the training split's own statistics.
    assert abs(float(data.x_train.mean())) < 0.1
    spec = data.input_spec()
    assert spec.image_size == 16 and spec.labels == ("cat", "dog") and len(spec.mean) == 3


def test_npz_grayscale_is_replicated_to_three_channels_and_split_is_seeded(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "d.npz"
    np.savez(path, x=rng.integers(0, 255, (40, 8, 8), dtype=np.uint8), y=np.arange(40) % 4,
             labels=np.array(["a", "b", "c", "d"]))
    a = load_data(path, 32, seed=3, mean=(0.5,) * 3, std=(0.25,) * 3)
    b = load_data(path, 32, seed=3, mean=(0.5,) * 3, std=(0.25,) * 3)
    c = load_data(path, 32, seed=4, mean=(0.5,) * 3, std=(0.25,) * 3)
    assert a.x_train.shape[1:] == (3, 32, 32) and a.labels == ("a", "b", "c", "d")
    assert np.array_equal(a.y_val.numpy(), b.y_val.numpy()) and a.fingerprint == b.fingerprint
    assert a.fingerprint != c.fingerprint
    assert bool((a.x_train[:, 0] == a.x_train[:, 1]).all())
    assert a.mean == (0.5,) * 3


def test_stratified_split_keeps_every_class_in_both_parts():
    y = np.repeat(np.arange(5), 7)
    tr, va = stratified_split(y, 0.2, 0)
    assert set(y[tr]) == set(y[va]) == set(range(5))
    assert len(np.intersect1d(tr, va)) == 0 and len(tr) + len(va) == len(y)


@pytest.mark.parametrize("make, fragment", [
    (lambda p: p / "missing", "not found"),
    (lambda p: (p / "a.txt").write_text("x") and p / "a.txt", "neither a folder nor an .npz"),
    (lambda p: (np.savez(p / "n.npz", x=np.zeros((4, 8, 8))), p / "n.npz")[1], "lacks array"),
    (lambda p: (np.savez(p / "s.npz", x=np.zeros((4, 8, 8)), y=np.zeros(3)), p / "s.npz")[1], "labels have shape"),
    (lambda p: (np.savez(p / "f.npz", x=np.zeros((4, 8, 8)), y=np.array([0, 1.5, 0, 1])), p / "f.npz")[1],
     "integers"),
    (lambda p: (np.savez(p / "o.npz", x=np.zeros((4, 8)), y=np.arange(4)), p / "o.npz")[1], "images have shape"),
    (lambda p: (np.savez(p / "one.npz", x=np.zeros((4, 8, 8)), y=np.zeros(4, int)), p / "one.npz")[1],
     "only one class"),
    (lambda p: ((p / "bad.npz").write_bytes(b"not a zip"), p / "bad.npz")[1], "not a readable .npz"),
    (lambda p: ((p / "e").mkdir(), p / "e")[1], "class folder"),
])
def test_bad_input_is_one_line_training_error(tmp_path, make, fragment):
    with pytest.raises(TrainingError) as err:
        load_data(make(tmp_path), 16)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_unreadable_image_and_empty_class_folder_are_errors(tmp_path):
    root = _write_folder(tmp_path / "imgs")
    (root / "dog" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(TrainingError, match="cannot read image"):
        load_data(root, 16)
    (root / "dog" / "broken.png").unlink()
    (root / "empty").mkdir()
    with pytest.raises(TrainingError, match="holds no images"):
        load_data(root, 16)


def test_bad_split_and_stats_are_errors():
    x, y = np.zeros((6, 4, 4)), np.arange(6) % 2
    with pytest.raises(EstaError, match="between 0 and 1"):
        from_arrays(x, y, 8, val_split=1.5)
    with pytest.raises(EstaError, match="3 values"):
        from_arrays(x, y, 8, mean=(0.5,), std=(0.2,))
