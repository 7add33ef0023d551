"""Paper row R18-BL: one ResNet18, self-bilinear pooling, FCE head only."""

from configs import base


def get_config():
    c = base.get_config()
    c.model.head_a = None
    c.model.bilinear = True
    c.model.fusion = ("fce",)
    c.train.stages = [base.stage("global", 9, fce=1.0)]
    return c
