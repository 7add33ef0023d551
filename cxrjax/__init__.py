"""cxrjax: multi-label chest X-ray classification on NIH ChestX-ray14 in JAX/Flax."""

__version__ = "0.1.0"
