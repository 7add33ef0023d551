"""What our libraries do with gs:// paths, measured on a real GCS API server (the emulator).

These pin the facts the path layer relies on (and the gaps it works around), so that a library
upgrade that changes one of them fails here first.
"""

import subprocess
import sys

import numpy as np
import pytest

from cxrjax.io import fileio, mirror


def test_orbax_checkpoint_manager_saves_and_restores_in_a_bucket(gcs_bucket):
    import orbax.checkpoint as ocp

    state = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "step": np.array(7, np.int32)}
    options = ocp.CheckpointManagerOptions(max_to_keep=1, enable_async_checkpointing=True)
    with ocp.CheckpointManager(f"{gcs_bucket}/run/checkpoints", options=options) as manager:
        for step in (1, 2):
            manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave({"step": step})))
        manager.wait_until_finished()
    with ocp.CheckpointManager(f"{gcs_bucket}/run/checkpoints") as manager:
        assert manager.all_steps() == [2]
        out = manager.restore(2, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(state), meta=ocp.args.JsonRestore()))
    np.testing.assert_array_equal(out["state"]["w"], state["w"])
    assert out["meta"] == {"step": 2}


def _array_record_file(path, records):
    from array_record.python import array_record_module

    writer = array_record_module.ArrayRecordWriter(str(path), "group_size:1")
    for r in records:
        writer.write(r)
    writer.close()


def test_array_record_and_grain_read_shards_straight_from_a_bucket(gcs_bucket, tmp_path):
    # array_record 0.8.6 ships riegeli's GcsReader (google/array_record#120 asked for it).
    import grain
    from array_record.python import array_record_data_source

    records = [f"record {i}".encode() for i in range(10)]
    _array_record_file(tmp_path / "shard-0", records)
    fileio.copy(tmp_path / "shard-0", f"{gcs_bucket}/data/shard-0")
    source = array_record_data_source.ArrayRecordDataSource([f"{gcs_bucket}/data/shard-0"])
    assert len(source) == 10 and source[7] == b"record 7"
    assert list(grain.MapDataset.source(source).shuffle(seed=0)) != records
    assert sorted(grain.MapDataset.source(source)) == sorted(records)


def test_array_record_opens_a_missing_gs_object_as_empty_without_an_error(gcs_bucket):
    # Why data paths need fileio.check_readable: a wrong shard path is silently empty.
    from array_record.python import array_record_module

    reader = array_record_module.ArrayRecordReader(f"{gcs_bucket}/no-such-shard")
    assert not reader.ok() and reader.num_records() == 0


def _tiny_builder():
    import tensorflow_datasets as tfds

    class TinyRecords(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        # One dotted part: TFDS then skips its source-file lookup, which for a class in the
        # namespace package ``tests`` would need importlib_resources.
        __module__ = "tiny_records"
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=(4, 4), dtype=np.uint8,
                                              encoding=tfds.features.Encoding.BYTES),
                "label": tfds.features.Scalar(dtype=np.int64)}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for i in range(6):
                yield i, {"image": np.full((4, 4), i, np.uint8), "label": i}

    return TinyRecords


def test_tfds_reads_a_dataset_prepared_locally_then_copied_to_a_bucket(gcs_bucket, tmp_path):
    builder_cls = _tiny_builder()
    builder_cls(data_dir=str(tmp_path / "tfds"), file_format="array_record").download_and_prepare()
    mirror.copy_tree(tmp_path / "tfds", f"{gcs_bucket}/tfds")
    remote = builder_cls(data_dir=f"{gcs_bucket}/tfds")
    assert remote.is_prepared()
    source = remote.as_data_source(split="train")
    labels = sorted(int(source[i]["label"]) for i in range(len(source)))
    assert labels == list(range(6))


def test_tfds_cannot_prepare_array_record_shards_straight_into_a_bucket(gcs_bucket):
    # array_record has a GCS reader but no GCS writer: prepare locally, then mirror.copy_tree.
    builder = _tiny_builder()(data_dir=f"{gcs_bucket}/tfds", file_format="array_record")
    with pytest.raises(RuntimeError, match="Failed to create the file header"):
        builder.download_and_prepare()


def test_tensorboardx_writes_event_files_to_a_bucket(gcs_bucket):
    # In a subprocess: tensorboardX's GCS record writer uploads the whole file on every flush
    # and once more when the interpreter exits (an atexit hook keeps it alive until then, and
    # its __del__ flushes), which must happen while the server is still up.
    code = ("from tensorboardX import SummaryWriter; "
            f"w = SummaryWriter('{gcs_bucket}/run/tensorboard'); "
            "w.add_scalar('loss', 0.5, 1); w.close()")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    (event_file,) = fileio.glob(f"{gcs_bucket}/run/tensorboard/events.out.tfevents.*")
    assert fileio.size(event_file) > 0
