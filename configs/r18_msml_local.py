"""R18 + R18-F-MSML, Local strategy (Table 2): streams with CE+MSML, then FCE fine-tuning.

Stage 2 starts from stage 1's best checkpoint; everything trains in both stages.
"""

from cxrjax import recipe


def get_config():
    return recipe.row("r18_msml_local")
