"""The paper's recipe (``cxrjax.recipe``), face of the configs: ``--config configs/base.py``
trains row R18. Variants build on ``cxrjax.recipe`` directly (see r18_msml.py, d121.py, ...)."""

from cxrjax import recipe


def get_config():
    return recipe.base_config()
