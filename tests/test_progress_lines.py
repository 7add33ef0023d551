"""What a run says while it works: each epoch named plainly."""

from helpers import tiny_config

from cxrjax import train


def test_an_epoch_is_named_by_its_stage_only_where_there_are_several():
    one = tiny_config("r18_msml")
    one.train.stages[0].epochs = 5
    assert train.epoch_label(one, 0, 1) == "epoch 1/5"
    two = tiny_config("r18_msml_local")
    assert len(two.train.stages) == 2
    second = two.train.stages[1]
    assert train.epoch_label(two, 1, 2) == f"stage {second.name} epoch 2/{second.epochs}"

