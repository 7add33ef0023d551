"""Paper row D121 + D121-F-MSML: as r18_msml.py with DenseNet121 trunks."""

from cxrjax import recipe


def get_config():
    return recipe.row("d121_msml")
