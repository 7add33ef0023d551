"""R18 + R18-F-MSML, Local-Fixed (Table 2): as Local, but stage 2 freezes both trunks.

Frozen means: no optimizer update (masked), and the trunks run as at evaluation, on their running
BatchNorm statistics, which stay unchanged.
"""

from cxrjax import recipe


def get_config():
    return recipe.row("r18_msml_local_fixed")
