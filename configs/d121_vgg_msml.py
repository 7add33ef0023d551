"""Paper row D121 + VGG-F-MSML (the paper's best, 0.8537): DenseNet121 (CE) + VGG16 (MSML)."""

from cxrjax import recipe


def get_config():
    c = recipe.f_msml(recipe.base_config())
    c.model.trunk_a = "densenet121"
    c.model.trunk_b = "vgg16"
    c.model.bilinear_reduce = 256
    return c
