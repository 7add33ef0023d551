"""Tests of cxrjax.io.metric_writers: the JSONL log (appended, survives a cut line) and
TensorBoard."""

import glob
import struct

import pytest
from tensorboardX.proto import event_pb2

from cxrjax.io.metric_writers import MetricWriter, read_metrics


def _scalars(workdir) -> list[tuple[int, str, float]]:
    """(step, tag, value) of every scalar in the TensorBoard event files (TFRecord framing:
    length, its CRC, the Event proto, its CRC)."""
    out = []
    for path in sorted(glob.glob(str(workdir / "tensorboard" / "events.out.tfevents.*"))):
        with open(path, "rb") as f:
            data = f.read()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4
            out += [(event.step, v.tag, v.simple_value) for v in event.summary.value]
    return out


def test_written_metrics_read_back_in_order_with_step_and_stage(tmp_path):
    writer = MetricWriter(str(tmp_path))
    writer.write(5, {"train/loss": 0.5, "train/lr": 1e-4}, stage="global")
    writer.write(10, {"val/mean_auc": 0.75})
    writer.close()
    assert read_metrics(str(tmp_path)) == [
        {"step": 5, "stage": "global", "train/loss": 0.5, "train/lr": 1e-4},
        {"step": 10, "stage": "", "val/mean_auc": 0.75}]


def test_a_resumed_run_appends_to_the_log(tmp_path):
    for step in (1, 2):
        writer = MetricWriter(str(tmp_path))
        writer.write(step, {"train/loss": float(step)})
        writer.close()
    assert [r["step"] for r in read_metrics(str(tmp_path))] == [1, 2]


def test_a_line_cut_by_a_kill_is_skipped_and_the_next_run_starts_a_new_line(tmp_path):
    writer = MetricWriter(str(tmp_path))
    writer.write(1, {"train/loss": 1.0})
    writer.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 2, "train/lo')  # killed mid-write
    writer = MetricWriter(str(tmp_path))
    writer.write(2, {"train/loss": 0.5})
    writer.close()

    with pytest.warns(UserWarning, match=r"metrics.jsonl line 2: not JSON \(cut short\?\)"):
        records = read_metrics(str(tmp_path))
    assert [(r["step"], r["train/loss"]) for r in records] == [(1, 1.0), (2, 0.5)]


def test_read_metrics_of_a_run_without_a_log_is_empty(tmp_path):
    assert read_metrics(str(tmp_path)) == []


def test_tensorboard_gets_each_value_tagged_by_stage(tmp_path):
    writer = MetricWriter(str(tmp_path))
    writer.write(3, {"train/loss": 0.25}, stage="streams")
    writer.write(4, {"val/mean_auc": 0.5})
    writer.close()
    assert _scalars(tmp_path) == [(3, "streams/train/loss", 0.25), (4, "val/mean_auc", 0.5)]


def test_a_bucket_workdir_gets_the_log_at_once_and_tensorboard_on_close(gcs_bucket, tmp_path):
    from cxrjax.io import fileio

    workdir = f"{gcs_bucket}/run"
    writer = MetricWriter(workdir)
    writer.write(1, {"train/loss": 0.5}, stage="global")
    assert read_metrics(workdir) == [{"step": 1, "stage": "global", "train/loss": 0.5}]
    writer.close()
    writer = MetricWriter(workdir)  # a resumed run appends
    writer.write(2, {"train/loss": 0.25}, stage="global")
    writer.close()
    assert [r["step"] for r in read_metrics(workdir)] == [1, 2]
    events = fileio.glob(f"{workdir}/tensorboard/events.out.tfevents.*")
    assert events  # uploaded from the local folder tensorboardX wrote
    for event in events:
        fileio.copy(event, str(tmp_path / "tensorboard" / event.rsplit("/", 1)[1]))
    assert sorted(_scalars(tmp_path)) == [(1, "global/train/loss", 0.5),
                                          (2, "global/train/loss", 0.25)]
