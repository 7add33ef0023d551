"""The grain pipeline: contract shapes, resumable iterators, epochs, host shards, exact eval."""

import os
import subprocess
import sys
import textwrap

import ml_collections as mlc
import numpy as np
import pytest

from cxrjax.data import pipeline


def _cfg(**kw):
    base = dict(source="nih", data_dir="", manual_dir="", split_scheme="paper", split_seed=0,
                resolution=256, crop=224, flip=False, workers=0, prefetch=2, chestmnist_path="",
                synthetic_n=0, synthetic_size=0, synthetic_seed=0, prepare_workers=0)
    return mlc.ConfigDict({**base, **kw})


def _create(cfg, **kw):
    """``create_datasets`` reading the paths written in ``cfg`` as they stand."""
    where = pipeline.PreparedData(data_dir=cfg.data_dir, manual_dir=cfg.manual_dir,
                                  chestmnist_path=cfg.chestmnist_path)
    return pipeline.create_datasets(cfg, where, **kw)


@pytest.fixture(scope="module")
def sample_cfg(prepared_sample, nih_sample_dir):
    return _cfg(data_dir=str(prepared_sample), manual_dir=str(nih_sample_dir))


@pytest.fixture(scope="module")
def coded_npz(tmp_path_factory):
    """A ChestMNIST-format npz whose 8x8 images spell their own index (split-wide, unique)."""
    path = tmp_path_factory.mktemp("npz") / "coded.npz"
    arrays, start = {}, 0
    for split, n in (("train", 203), ("val", 31), ("test", 47)):
        idx = np.arange(start, start + n)
        images = np.zeros((n, 8, 8), np.uint8)
        images[:, :, :4] = (idx % 256)[:, None, None]  # left half: low byte
        images[:, :, 4:] = (idx // 256)[:, None, None]  # right half: high byte
        arrays[f"{split}_images"] = images
        arrays[f"{split}_labels"] = (np.random.default_rng(start).random((n, 14)) < 0.2
                                     ).astype(np.uint8)
        start += n
    np.savez(path, **arrays)
    return path


def _decode(batch):
    """Record index spelt by each coded image (unflipped)."""
    img = batch["image"][..., 0].astype(np.int64)
    return img[:, 0, 0] + 256 * img[:, 0, -1]


def _coded(coded_npz, **kw):
    return _cfg(source="chestmnist", chestmnist_path=str(coded_npz), crop=8, **kw)


def test_train_batches_follow_the_contract(sample_cfg):
    ds = _create(sample_cfg, global_batch_size=8, eval_batch_size=8, seed=0,
                 process_index=0, process_count=1)
    assert ds.steps_per_epoch == ds.num_examples("train") // 8
    batch = next(ds.train_iter())
    assert batch["image"].shape == (8, 224, 224, 1) and batch["image"].dtype == np.uint8
    assert batch["labels"].shape == (8, 14) and batch["labels"].dtype == np.uint8


def test_eval_scores_every_sample_image_once_with_a_centre_crop(sample_cfg):
    ds = _create(sample_cfg, global_batch_size=8, eval_batch_size=16, seed=0,
                 process_index=0, process_count=1)
    records = ds.records
    seen = np.zeros(ds.num_examples("test"), int)
    for batch in ds.eval_batches("test"):
        assert batch["image"].shape == (16, 224, 224, 1)
        assert batch["mask"].dtype == np.bool_ and batch["index"].dtype == np.int32
        np.add.at(seen, batch["index"][batch["mask"]], 1)
        first = int(batch["index"][0])
        image, labels = records[ds.split_rows["test"][first]]
        np.testing.assert_array_equal(batch["image"][0, ..., 0], image[16:240, 16:240])
        np.testing.assert_array_equal(batch["labels"][0], labels)
    assert np.all(seen == 1)
    assert len(ds.image_ids("test")) == ds.num_examples("test") == len(seen)


def test_resumed_iterator_yields_the_same_next_batches(coded_npz):
    ds = _create(_coded(coded_npz), global_batch_size=16, eval_batch_size=16,
                 seed=3, process_index=0, process_count=1)
    it = ds.train_iter()
    for _ in range(14):  # 12 steps per epoch: the state crosses an epoch boundary
        next(it)
    state = it.get_state()
    expected = [_decode(next(it)) for _ in range(3)]
    fresh = ds.train_iter(state)
    assert [list(_decode(next(fresh))) for _ in range(3)] == [list(e) for e in expected]


def test_resume_also_works_with_worker_processes(coded_npz):
    ds = _create(_coded(coded_npz, workers=1), global_batch_size=16,
                 eval_batch_size=16, seed=3, process_index=0, process_count=1)
    it = ds.train_iter()
    for _ in range(5):
        next(it)
    state = it.get_state()
    expected = _decode(next(it))
    ds0 = _create(_coded(coded_npz), global_batch_size=16, eval_batch_size=16,
                  seed=3, process_index=0, process_count=1)
    np.testing.assert_array_equal(_decode(next(ds0.train_iter(state))), expected)


def test_each_epoch_is_a_fresh_permutation_with_whole_batches(coded_npz):
    ds = _create(_coded(coded_npz), global_batch_size=16, eval_batch_size=16,
                 seed=0, process_index=0, process_count=1)
    assert ds.steps_per_epoch == 203 // 16
    it = ds.train_iter()
    epochs = [np.concatenate([_decode(next(it)) for _ in range(ds.steps_per_epoch)])
              for _ in range(2)]
    for e in epochs:
        assert len(set(e.tolist())) == len(e) == 192  # no repeats inside an epoch
        assert set(e.tolist()) <= set(range(203))
    assert not np.array_equal(epochs[0], epochs[1])
    other = _create(_coded(coded_npz), global_batch_size=16,
                    eval_batch_size=16, seed=1, process_index=0,
                    process_count=1)
    assert not np.array_equal(np.concatenate(
        [_decode(b) for b, _ in zip(other.train_iter(), range(12), strict=False)]), epochs[0])


def test_host_slices_make_the_same_global_batches_and_eval_partitions(coded_npz):
    hosts = [_create(_coded(coded_npz), global_batch_size=12,
                     eval_batch_size=9, seed=0, process_index=p,
                     process_count=3) for p in range(3)]
    single = _create(_coded(coded_npz), global_batch_size=12,
                     eval_batch_size=9, seed=0, process_index=0,
                     process_count=1)
    assert len({h.steps_per_epoch for h in hosts + [single]}) == 1
    iters, whole = [h.train_iter() for h in hosts], single.train_iter()
    for _ in range(single.steps_per_epoch + 2):  # across an epoch boundary
        parts = [next(it) for it in iters]
        ids = [_decode(p) for p in parts]
        assert all(len(i) == 4 for i in ids)  # each host reads only its slice
        assert not set(ids[0]) & set(ids[1]) and not set(ids[1]) & set(ids[2])
        # The hosts' slices, in host order, are exactly the 1-host global batch.
        full = next(whole)
        for key in ("image", "labels"):
            np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), full[key])
    # A 3-host iterator state resumes the same global sequence on 1 host.
    resumed = single.train_iter(iters[0].get_state())
    parts = [next(it) for it in iters]
    np.testing.assert_array_equal(np.concatenate([p["image"] for p in parts]),
                                  next(resumed)["image"])
    for split, n in (("val", 31), ("test", 47)):
        seen = np.zeros(n, int)
        n_batches = []
        for h in hosts:
            batches = list(h.eval_batches(split))
            n_batches.append(len(batches))
            for b in batches:
                assert b["image"].shape[0] == 3  # 9 per step over 3 hosts
                np.add.at(seen, b["index"][b["mask"]], 1)
                offset = 203 if split == "val" else 234
                np.testing.assert_array_equal(_decode(b)[b["mask"]], b["index"][b["mask"]]
                                              + offset)
        assert np.all(seen == 1), split
        assert len(set(n_batches)) == 1  # every host runs the same number of eval steps


def test_flip_mirrors_some_images_when_enabled(coded_npz):
    ds = _create(_coded(coded_npz, flip=True), global_batch_size=16,
                 eval_batch_size=16, seed=0, process_index=0, process_count=1)
    batch = next(ds.train_iter())["image"][..., 0]
    flipped = batch[:, 0, 0] < batch[:, 0, -1]  # index < 256: the high byte half is zero
    low = batch[:, 0, -1] == 0
    assert flipped.any() and low.any()


def test_random_crop_stays_inside_the_image(sample_cfg):
    cfg = _cfg(**{**sample_cfg.to_dict(), "crop": 250})
    ds = _create(cfg, global_batch_size=4, eval_batch_size=4, seed=0,
                 process_index=0, process_count=1)
    assert next(ds.train_iter())["image"].shape == (4, 250, 250, 1)
    with pytest.raises(ValueError, match="data.crop=300 must be in"):
        _create(_cfg(**{**sample_cfg.to_dict(), "crop": 300}),
                global_batch_size=4, eval_batch_size=4, seed=0,
                process_index=0, process_count=1)


def test_bad_batch_sizes_and_process_index_are_rejected(coded_npz):
    with pytest.raises(ValueError, match="global_batch_size=10 must be a positive multiple"):
        _create(_coded(coded_npz), global_batch_size=10, eval_batch_size=9,
                seed=0, process_index=0, process_count=3)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        _create(_coded(coded_npz), global_batch_size=256, eval_batch_size=8,
                seed=0, process_index=0, process_count=1)
    with pytest.raises(ValueError, match="process_index 3 not in"):
        _create(_coded(coded_npz), global_batch_size=8, eval_batch_size=8,
                seed=0, process_index=3, process_count=3)


def test_unknown_split_and_source_are_rejected(coded_npz):
    ds = _create(_coded(coded_npz), global_batch_size=8, eval_batch_size=8,
                 seed=0, process_index=0, process_count=1)
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        ds.num_examples("dev")
    with pytest.raises(ValueError, match="unknown data.source 'mimic'"):
        pipeline.ensure_prepared(_cfg(source="mimic"), "/tmp")


def test_ensure_prepared_for_nih_says_where_it_looked_and_what_to_run(tmp_path):
    cfg = _cfg(data_dir=str(tmp_path / "tfds"))
    with pytest.raises(FileNotFoundError) as e:
        pipeline.ensure_prepared(cfg, str(tmp_path))
    msg = str(e.value)
    assert str(tmp_path / "tfds") in msg and "chest_xray14" in msg
    assert "nihcc.app.box.com" in msg and "python -m cxrjax.data.prepare" in msg


def test_ensure_prepared_returns_the_expanded_paths_of_a_prepared_nih_dataset(
        sample_cfg, tmp_path, monkeypatch):
    home, name = os.path.split(sample_cfg.data_dir)
    monkeypatch.setenv("HOME", home)
    cfg = _cfg(data_dir=f"~/{name}", manual_dir=sample_cfg.manual_dir)
    before = cfg.to_dict()
    prepared = pipeline.ensure_prepared(cfg, str(tmp_path))
    assert prepared == pipeline.PreparedData(data_dir=f"{home}/{name}",
                                             manual_dir=sample_cfg.manual_dir)
    assert cfg.to_dict() == before  # the config is read, never written


def test_ensure_prepared_checks_the_chestmnist_npz_and_caches_it_in_the_workdir(tmp_path,
                                                                                 coded_npz):
    with pytest.raises(FileNotFoundError, match="chestmnist_path='/nope.npz' is not a file"):
        pipeline.ensure_prepared(_cfg(source="chestmnist", chestmnist_path="/nope.npz"), "w")
    cfg = _coded(coded_npz)
    before = cfg.to_dict()
    prepared = pipeline.ensure_prepared(cfg, str(tmp_path))
    cache = str(tmp_path / "chestmnist_cache")
    assert prepared == pipeline.PreparedData(chestmnist_path=str(coded_npz),
                                             chestmnist_cache=cache)
    assert len(os.listdir(cache)) > 0
    assert cfg.to_dict() == before


def test_open_datasets_uses_the_run_batch_sizes_and_seed(tmp_path, coded_npz):
    config = mlc.ConfigDict(dict(seed=7, data=_coded(coded_npz).to_dict(),
                                 train=dict(batch_size=16, eval_batch_size=8)))
    config.lock()
    ds = pipeline.open_datasets(config, str(tmp_path))
    assert (ds.local_batch_size, ds.eval_batch_size, ds.seed) == (16, 8, 7)
    direct = _create(config.data, global_batch_size=16, eval_batch_size=8, seed=7,
                     process_index=0, process_count=1)
    np.testing.assert_array_equal(_decode(next(ds.train_iter())),
                                  _decode(next(direct.train_iter())))
    assert ds.image_ids("test") == direct.image_ids("test")


def test_state_of_a_different_pipeline_is_rejected(coded_npz):
    ds = _create(_coded(coded_npz), global_batch_size=16, eval_batch_size=16,
                 seed=3, process_index=0, process_count=1)
    state = ds.train_iter().get_state()
    other = _create(_coded(coded_npz), global_batch_size=8, eval_batch_size=16,
                    seed=3, process_index=0, process_count=1)
    with pytest.raises(ValueError, match="from a different input pipeline"):
        other.train_iter(state)


def test_split_images_absent_from_the_dataset_are_reported(prepared_sample, caplog):
    cfg = _cfg(data_dir=str(prepared_sample), manual_dir="", split_scheme="chexnet")
    # The 207 sample images are all in the CheXNet test list: the other splits are empty.
    with caplog.at_level("WARNING"), pytest.raises(ValueError, match="train split has 0 images"):
        _create(cfg, global_batch_size=1, eval_batch_size=8, seed=0,
                process_index=0, process_count=1)
    assert "split train: 78468 of its 78468 images are not in the prepared dataset" in caplog.text
    assert "split test: 22226 of its 22433" in caplog.text


# Library lines users saw on every run, none of them news.
LIBRARY_NOISE = ("Downloading and preparing dataset", "Unknown size", "downloaded and prepared",
                 "Using custom data configuration", "has no dataset_info.json",
                 "resource_tracker", "leaked shared_memory", "Exception ignored", "Traceback")

_READ_WITH_WORKERS = textwrap.dedent("""
    import sys

    import ml_collections as mlc

    from cxrjax.data import pipeline

    data_dir, manual_dir = sys.argv[1:]
    cfg = mlc.ConfigDict(dict(source="nih", data_dir=data_dir, manual_dir=manual_dir,
                              split_scheme="paper", split_seed=0, resolution=32, crop=28,
                              flip=False, workers=2, prefetch=2))
    prepared = pipeline.PreparedData(data_dir=data_dir, manual_dir=manual_dir)
    ds = pipeline.create_datasets(cfg, prepared, global_batch_size=4, eval_batch_size=4,
                                  seed=0, process_index=0, process_count=1)
    train = ds.train_iter()
    train_batches = [next(train) for _ in range(3)]  # left open, grain's buffers full
    val = list(ds.eval_batches("val"))  # read to the end
    test = ds.eval_batches("test")
    first_test = next(test)  # abandoned
    print(len(train_batches), len(val) > 0, first_test["image"].shape)
""")


def test_preparing_and_reading_with_workers_prints_no_library_noise(tmp_path, nih_folder):
    rows = [(f"{i:08d}_000.png", "Mass" if i % 3 else "No Finding", i) for i in range(1, 41)]
    manual = nih_folder.make_nih_dir(tmp_path / "nih", rows)
    data_dir = tmp_path / "tfds"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    prepared = subprocess.run(
        [sys.executable, "-m", "cxrjax.data.prepare", "--manual_dir", str(manual),
         "--data_dir", str(data_dir), "--resolution", "32", "--workers", "2"],
        capture_output=True, text=True, env=env, timeout=300)
    assert prepared.returncode == 0, prepared.stderr
    assert prepared.stdout.startswith("prepared 40 images at 32px in ")
    assert " INFO preparing chest_xray14 at 32px in " in prepared.stderr
    read = subprocess.run([sys.executable, "-c", _READ_WITH_WORKERS, str(data_dir), str(manual)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert read.returncode == 0, read.stderr
    assert read.stdout == "3 True (4, 28, 28, 1)\n"
    for output in (prepared.stdout, prepared.stderr, read.stdout, read.stderr):
        assert not [noise for noise in LIBRARY_NOISE if noise in output], output
