"""Tests of the config checks: every bad field is one line that names it."""

import pytest
from helpers import tiny_config

from cxrjax import config_checks
from cxrjax.config_checks import ConfigError


@pytest.mark.parametrize("field,value,message", [
    ("model.trunk_a", "resnet19", "model.trunk_a='resnet19': unknown architecture"),
    ("train.batch_size", 7, "train.batch_size=7 must be a positive multiple of the device"),
    ("data.crop", 300, "data.crop=300 is larger than data.resolution=256"),
    ("model.head_b", "focal", "model.head_b='focal': expected 'ce', 'msml' or None"),
    ("model.trunk_b", None, "model.head_b='msml' needs a second stream: model.trunk_b is None"),
])
def test_config_errors_name_the_field(field, value, message):
    config = tiny_config("r18_msml")
    section, key = field.split(".")
    config[section][key] = value
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        config_checks.check_config(config)


def test_negative_loss_weight_is_refused():
    config = tiny_config("r18_msml")
    config.train.stages[0].loss_weights.msml = -0.2
    with pytest.raises(ConfigError, match=r"stages\[0\].loss_weights.msml=-0.2 is negative"):
        config_checks.check_config(config)


def test_crop_smaller_than_the_trunk_stride_is_refused():
    config = tiny_config("d121_msml", crop=24)
    config.data.resolution = 24
    with pytest.raises(ConfigError, match=r"data.crop=24 is smaller than the densenet_tiny "):
        config_checks.check_config(config)


def test_unknown_dtype_is_refused_before_anything_is_built():
    config = tiny_config("r18")
    config.dtype = "float16"
    with pytest.raises(ConfigError, match="dtype='float16': expected 'auto', 'float32' or "):
        config_checks.check_config(config)


def test_loss_weight_of_a_head_the_model_lacks_is_refused():
    config = tiny_config("r18_msml")
    config.train.stages[0].loss_weights.ce_b = 0.5
    with pytest.raises(ConfigError, match=r"stages\[0\].loss_weights has 'ce_b', not a head of "
                                          r"this model \(ce, msml, fce\)"):
        config_checks.check_config(config)
