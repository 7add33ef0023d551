"""R18 + R18-F-MSML, Local strategy (Table 2): streams with CE+MSML, then FCE fine-tuning.

Stage 2 starts from stage 1's best checkpoint; everything trains in both stages.
"""

from configs import base, r18_msml


def get_config():
    c = r18_msml.get_config()
    c.train.stages = [
        base.stage("streams", 6, ce=0.2, msml=0.2, fce=0.0),
        base.stage("bilinear", 3, ce=0.0, msml=0.0, fce=1.0),
    ]
    return c
