"""Paper row R18 + R18-F-MSML: CE on stream A, MSML on stream B, bilinear FCE (Global).

Loss 0.2 * (E_MSML + E_CE) + 0.6 * E_FCE (paper section 2.3).
"""

from cxrjax import recipe


def get_config():
    return recipe.row("r18_msml")
