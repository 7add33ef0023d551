"""Paper row D121-BL: as r18_bl.py with DenseNet121 trunks."""

from configs import base, r18_bl


def get_config():
    return base.densenet121_streams(r18_bl.get_config())
