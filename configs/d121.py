"""Paper row D121: as r18.py with DenseNet121 trunks."""

from cxrjax import recipe


def get_config():
    return recipe.row("d121")
