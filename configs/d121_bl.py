"""Paper row D121-BL: as r18_bl.py with DenseNet121 trunks."""

from cxrjax import recipe


def get_config():
    return recipe.row("d121_bl")
