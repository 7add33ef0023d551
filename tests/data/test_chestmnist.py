"""ChestMNIST npz source: checked on npz files the tests write."""

import pickle

import numpy as np
import pytest

from cxrjax.data import chestmnist


def _write(path, sizes=(12, 4, 6), side=28, **override):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in zip(chestmnist.SPLITS, sizes, strict=True):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, side, side), dtype=np.uint8)
        arrays[f"{split}_labels"] = (rng.random((n, 14)) < 0.3).astype(np.uint8)
    arrays.update(override)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez_compressed(path, **arrays)
    return path, arrays


def test_records_follow_train_val_test_order_with_their_labels(tmp_path):
    path, arrays = _write(tmp_path / "chestmnist.npz")
    records, names = chestmnist.load(str(path))
    assert [len(names[s]) for s in chestmnist.SPLITS] == [12, 4, 6]
    assert names["val"][0] == "chestmnist_val_000000" and len(records) == 22
    image, labels = records[12 + 3]
    np.testing.assert_array_equal(image, arrays["val_images"][3])
    np.testing.assert_array_equal(labels, arrays["val_labels"][3])
    assert records.resolution == 28


def test_cache_is_memory_mapped_and_pickles_without_the_images(tmp_path):
    path, arrays = _write(tmp_path / "c.npz", side=64)
    records, _ = chestmnist.load(str(path), str(tmp_path / "cache"))
    assert isinstance(records._parts[0][0], np.memmap)
    blob = pickle.dumps(records)
    assert len(blob) < arrays["train_images"].nbytes
    again = pickle.loads(blob)
    np.testing.assert_array_equal(again[21][0], arrays["test_images"][5])


@pytest.mark.parametrize("override, message", [
    ({"val_labels": None}, r"missing \['val_labels'\]"),
    ({"train_images": np.zeros((12, 28, 28), np.float32)}, "train_images must be uint8"),
    ({"test_images": np.zeros((6, 28, 28, 3), np.uint8)}, "must be \\(N, S, S\\) grayscale"),
    ({"train_labels": np.zeros((12, 15), np.uint8)}, "train_labels must be \\(12, 14\\)"),
    ({"val_labels": np.full((4, 14), 2, np.uint8)}, "val_labels must hold only 0/1"),
    ({"val_images": np.zeros((4, 32, 32), np.uint8)}, "image sizes differ"),
])
def test_malformed_npz_is_a_clear_error(tmp_path, override, message):
    path, _ = _write(tmp_path / "bad.npz", **override)
    with pytest.raises(ValueError, match=message):
        chestmnist.load(str(path))


def test_missing_or_non_npz_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="ChestMNIST npz not found"):
        chestmnist.load(str(tmp_path / "none.npz"))
    (tmp_path / "x.npz").write_bytes(b"hello")
    with pytest.raises(ValueError, match="not a readable npz"):
        chestmnist.load(str(tmp_path / "x.npz"))
    with pytest.raises(ValueError, match="not a readable npz"):
        chestmnist.load(str(tmp_path / "x.npz"), str(tmp_path / "cache"))
