"""Paper row D121 + VGG-F-MSML (the paper's best, 0.8537): DenseNet121 (CE) + VGG16 (MSML)."""

from configs import r18_msml


def get_config():
    c = r18_msml.get_config()
    c.model.trunk_a = "densenet121"
    c.model.trunk_b = "vgg16"
    c.model.bilinear_reduce = 256
    return c
