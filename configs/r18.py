"""Paper row R18: one ImageNet ResNet18, CE head."""

from cxrjax import recipe


def get_config():
    return recipe.row("r18")
