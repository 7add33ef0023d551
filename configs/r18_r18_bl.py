"""Paper row R18 + R18-BL: two ResNet18 streams, CE on each, bilinear FCE."""

from configs import base


def get_config():
    c = base.get_config()
    c.model.trunk_b = "resnet18"
    c.model.head_b = "ce"
    c.model.bilinear = True
    c.train.stages = [base.stage("global", 9, ce=0.2, ce_b=0.2, fce=0.6)]
    return c
