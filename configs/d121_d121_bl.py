"""Paper row D121 + D121-BL: as r18_r18_bl.py with DenseNet121 trunks."""

from cxrjax import recipe


def get_config():
    return recipe.densenet121_streams(recipe.two_stream_bilinear(recipe.base_config()))
