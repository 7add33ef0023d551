"""Shared fixtures of the evaluation tests."""

import pytest


@pytest.fixture(scope="module")
def quick_compiles():
    """XLA without its expensive optimisation passes while a module that asks for it runs (its
    jitted AUCs, bootstraps and steps): the same computation to float rounding, compiled in less
    CPU time. Only for modules that compare nothing bit for bit with a default-compiled run."""
    import jax

    saved = jax.config.values["jax_disable_most_optimizations"]
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", saved)
