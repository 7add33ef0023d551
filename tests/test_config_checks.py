"""Tests of the config checks: every bad field is one line that names it."""

import pytest
from helpers import tiny_config

from cxrjax import config_checks
from cxrjax.config_checks import ConfigError


@pytest.mark.parametrize("field,value,message", [
    ("model.trunk_a", "resnet19", "model.trunk_a='resnet19': unknown architecture"),
    ("train.batch_size", 7, "train.batch_size=7 must be a positive multiple of the device"),
    ("data.crop", 300, "data.crop=300 is larger than data.resolution=256"),
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


def test_compute_dtype_is_float32_on_cpu_for_auto_and_rejects_unknown_names():
    config = tiny_config("r18")
    config.dtype = "auto"
    assert config_checks.compute_dtype(config).name == "float32"
    config.dtype = "float16"
    with pytest.raises(ConfigError, match="dtype='float16'"):
        config_checks.compute_dtype(config)
