"""Paper row R18 + VGG-F-MSML: stream A ResNet18 (CE), stream B VGG16 (MSML), bilinear FCE.

VGG16's trunk gives 14x14 at 224 px; it is average-pooled to ResNet's 7x7 before pooling.
"""

from cxrjax import recipe


def get_config():
    return recipe.row("r18_vgg_msml")
