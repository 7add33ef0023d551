"""Paper row D121 + D121-F-MSML: as r18_msml.py with DenseNet121 trunks.

DenseNet121 gives 1024 channels: each stream is reduced to 256 by a 1x1 conv before the
bilinear outer product (1024 x 1024 features would make the projection 0.5 G parameters).
"""

from configs import r18_msml


def get_config():
    c = r18_msml.get_config()
    c.model.trunk_a = "densenet121"
    if c.model.trunk_b is not None:
        c.model.trunk_b = "densenet121"
    c.model.bilinear_reduce = 256 if c.model.bilinear else None
    return c
