"""Paper row D121: as r18.py with DenseNet121 trunks."""

from configs import base, r18


def get_config():
    return base.densenet121_streams(r18.get_config())
