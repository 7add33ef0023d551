"""grain's worker processes: how many ``data.workers`` gives, and their shared memory released."""

import os

import grain.multiprocessing
import ml_collections as mlc
import numpy as np
import pytest

from cxrjax import recipe
from cxrjax.data import grain_workers, pipeline


@pytest.mark.parametrize("cores, expected", [(1, 0), (2, 1), (4, 3), (9, 8), (64, 8)])
def test_auto_leaves_a_core_to_the_training_loop_and_stops_at_eight(cores, expected):
    assert grain_workers.resolve_count(grain_workers.AUTO, cores=cores) == expected


def test_an_explicit_count_is_kept_and_a_negative_one_other_than_auto_is_refused():
    assert grain_workers.resolve_count(0, cores=2) == 0
    assert grain_workers.resolve_count(12, cores=2) == 12
    with pytest.raises(ValueError, match=r"data.workers=-2 must be >= 0, or -1"):
        grain_workers.resolve_count(-2)


def test_the_recipe_asks_for_what_the_machine_has():
    workers = recipe.base_config().data.workers
    assert workers == grain_workers.AUTO
    assert grain_workers.resolve_count(workers, cores=2) == 1


@pytest.fixture(scope="module")
def small_npz(tmp_path_factory):
    """A ChestMNIST-format npz of 16x16 images whose pixels are their index in the split."""
    path = tmp_path_factory.mktemp("npz") / "small.npz"
    arrays = {}
    for split, n in (("train", 32), ("val", 12), ("test", 12)):
        arrays[f"{split}_images"] = np.broadcast_to(
            np.arange(n, dtype=np.uint8)[:, None, None], (n, 16, 16)).copy()
        arrays[f"{split}_labels"] = np.zeros((n, 14), np.uint8)
    np.savez(path, **arrays)
    return path


def _datasets(npz, workers):
    cfg = mlc.ConfigDict(dict(source="chestmnist", chestmnist_path=str(npz), split_scheme="paper",
                              split_seed=0, resolution=16, crop=16, flip=False, workers=workers,
                              prefetch=2))
    prepared = pipeline.PreparedData(chestmnist_path=str(npz))
    return pipeline.create_datasets(cfg, prepared, global_batch_size=4, eval_batch_size=4,
                                    seed=0, process_index=0, process_count=1)


def test_a_batch_in_shared_memory_comes_out_as_a_copy_and_its_block_is_unlinked():
    block = grain.multiprocessing.SharedMemoryArray((3, 2), np.uint8)
    block[:] = 7
    block.unlink_on_del()  # as grain marks what it hands to the main process
    name = block.shm.name
    batch = next(grain_workers.Batches(iter([{"image": block, "index": np.arange(3)}])))
    assert not os.path.exists(f"/dev/shm/{name}")
    assert type(batch["image"]) is np.ndarray and batch["image"].base is None
    np.testing.assert_array_equal(batch["image"], np.full((3, 2), 7, np.uint8))
    np.testing.assert_array_equal(batch["index"], np.arange(3))


def test_batches_from_workers_are_the_batches_made_in_process(small_npz):
    expected = list(_datasets(small_npz, workers=0).eval_batches("val"))
    batches = _datasets(small_npz, workers=2).eval_batches("val")
    got = list(batches)
    assert len(got) == len(expected) == 3
    for ours, theirs in zip(got, expected, strict=True):
        assert all(type(array) is np.ndarray for array in ours.values())
        for key in theirs:
            np.testing.assert_array_equal(ours[key], theirs[key])
    batches.close()
    batches.close()  # idempotent
    assert next(batches, None) is None


def test_a_train_iterator_closes_and_a_resumed_one_replaces_its_workers(small_npz):
    ds = _datasets(small_npz, workers=2)
    it = ds.train_iter()
    next(it)
    first_workers = it._it
    it.set_state(it.get_state())
    assert next(first_workers, None) is None  # the replaced iterator was closed
    assert next(it)["image"].shape == (4, 16, 16, 1)
    it.close()
    with pytest.raises(StopIteration):
        next(it)
