"""Paper row D121 + D121-F-MSML: as r18_msml.py with DenseNet121 trunks."""

from configs import base, r18_msml


def get_config():
    return base.densenet121_streams(r18_msml.get_config())
