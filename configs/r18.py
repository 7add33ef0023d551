"""Paper row R18: one ImageNet ResNet18, CE head."""

from configs import base


def get_config():
    return base.get_config()
