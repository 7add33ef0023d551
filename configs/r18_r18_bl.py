"""Paper row R18 + R18-BL: two ResNet18 streams, CE on each, bilinear FCE."""

from cxrjax import recipe


def get_config():
    return recipe.row("r18_r18_bl")
