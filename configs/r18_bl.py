"""Paper row R18-BL: one ResNet18, self-bilinear pooling, FCE head only."""

from cxrjax import recipe


def get_config():
    return recipe.row("r18_bl")
