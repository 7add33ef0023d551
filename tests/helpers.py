"""Shared test helpers: tiny variants of the paper configs."""

import importlib

TINY = {"resnet18": "resnet_tiny", "densenet121": "densenet_tiny", "vgg16": "vgg_tiny"}


def tiny_config(name: str, crop: int = 32, batch: int = 8):
    """A paper config with its trunks swapped for tiny variants of the same families."""
    c = importlib.import_module(f"configs.{name}").get_config()
    c.model.trunk_a = TINY.get(c.model.trunk_a, c.model.trunk_a)
    if c.model.trunk_b is not None:
        c.model.trunk_b = TINY.get(c.model.trunk_b, c.model.trunk_b)
    if c.model.bilinear_reduce:
        c.model.bilinear_reduce = 8
    c.model.bilinear_dim = 16
    c.model.init = "scratch"
    c.data.crop = crop
    c.train.batch_size = batch
    c.train.lr = 1e-3
    return c
