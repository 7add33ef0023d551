"""Paper row D121 + VGG-F-MSML (the paper's best, 0.8537): DenseNet121 (CE) + VGG16 (MSML)."""

from cxrjax import recipe


def get_config():
    return recipe.row("d121_vgg_msml")
