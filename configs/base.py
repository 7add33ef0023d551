"""The paper's recipe (``cxrjax.recipe``), face of the configs: ``--config configs/base.py``
trains row R18. Each row of the paper's tables is one entry of ``cxrjax.recipe.ROWS``; a config
names its row and overrides what differs (see demo.py)."""

from cxrjax import recipe


def get_config():
    return recipe.row("r18")
