"""Paper row R18 + R18-F-MSML: CE on stream A, MSML on stream B, bilinear FCE (Global).

Loss 0.2 * (E_MSML + E_CE) + 0.6 * E_FCE (paper section 2.3).
"""

from configs import base


def get_config():
    c = base.get_config()
    c.model.trunk_b = "resnet18"
    c.model.head_b = "msml"
    c.model.bilinear = True
    c.train.stages = [base.stage("global", 9, ce=0.2, msml=0.2, fce=0.6)]
    return c
