"""What a run says while it works: each epoch named plainly, and no silent minute at the start."""

import logging

from helpers import tiny_config

from cxrjax import train
from cxrjax.data import synthetic


def test_an_epoch_is_named_by_its_stage_only_where_there_are_several():
    one = tiny_config("r18_msml")
    one.train.stages[0].epochs = 5
    assert train.epoch_label(one, 0, 1) == "epoch 1/5"
    two = tiny_config("r18_msml_local")
    assert len(two.train.stages) == 2
    second = two.train.stages[1]
    assert train.epoch_label(two, 1, 2) == f"stage {second.name} epoch 2/{second.epochs}"


def test_drawing_the_synthetic_set_is_announced_once(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="cxrjax"):
        synthetic.generate(str(tmp_path / "set"), n=4, size=32, seed=0, workers=0)
    assert [r.getMessage() for r in caplog.records] == [
        f"drawing a synthetic chest X-ray set: 4 images of 32 px in {tmp_path / 'set'} (once)"]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="cxrjax"):
        synthetic.generate(str(tmp_path / "set"), n=4, size=32, seed=0, workers=0)  # reused
    assert not caplog.records
