"""Paper row D121 + D121-BL: as r18_r18_bl.py with DenseNet121 trunks."""

from cxrjax import recipe


def get_config():
    return recipe.row("d121_d121_bl")
