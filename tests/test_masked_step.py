"""The train step with a label mask: a missing label adds nothing to the loss; an all-ones mask
is the unmasked step (the loss bit for bit; the parameters to float rounding, as XLA fuses the
two graphs differently). NIH batches carry no mask, so their step is the unmasked one as
traced before (tests/data/test_sources.py checks they carry none).

Each model is initialised once and each step built once (the state is fresh for every step:
the step donates it), compiled without XLA's costly optimisation passes: the same computation
to float rounding, in about half the compile time, which is nearly all of this module's."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from helpers import tiny_config

from cxrjax import losses, models, train
from cxrjax.evaluation import inference
from cxrjax.runfolder import loading as runs


def _batch(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"image": rng.integers(0, 256, (8, 32, 32, 1), dtype=np.uint8),
            "labels": (rng.random((8, 14)) < 0.3).astype(np.uint8)}


@functools.cache
def _initialised(name: str) -> tuple:
    """The tiny config of ``name``, its model, its initial variables and its stage-0 step."""
    config = tiny_config(name)
    model, variables = runs.init_model(config, jnp.float32)
    _, step = train.create_stage(config, 0, model, variables, 100, inference.create_mesh())
    return config, model, variables, step


def _step(name, batch):
    """One step of ``name``'s stage 0 from its initial variables: (parameters, loss)."""
    config, model, variables, step = _initialised(name)
    state, _ = train.create_stage(config, 0, model, variables, 100, inference.create_mesh())
    state, metrics = step(state, batch)
    return jax.tree.map(np.asarray, (state.params, metrics["loss"]))


def test_an_all_ones_label_mask_gives_the_unmasked_step():
    batch = _batch()
    params, loss = _step("r18_msml", batch)
    masked, masked_loss = _step("r18_msml", {**batch, "label_mask": np.ones((8, 14), np.uint8)})
    assert loss == masked_loss
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8), params,
                 masked)


def test_the_step_loss_counts_only_known_labels():
    """The step's loss is the masked losses' weighted sum (CE, MSML and FCE heads): flipping a
    masked label changes nothing, flipping a known one does."""
    batch = _batch(1)
    mask = np.ones((8, 14), np.uint8)
    mask[:, 3] = 0  # e.g. a class the release does not label
    flipped = batch["labels"].copy()
    flipped[:, 3] = 1 - flipped[:, 3]
    _, loss = _step("r18_msml", {**batch, "label_mask": mask})
    _, same = _step("r18_msml", {**batch, "labels": flipped, "label_mask": mask})
    _, other = _step("r18_msml", {**batch, "labels": flipped})
    assert loss == same and other != loss
    config, model, variables, _ = _initialised("r18_msml")
    logits = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"])[0])(
        variables, batch["image"])
    heads = models.output_heads(model)
    expected = losses.weighted_total(losses.head_losses(logits, batch["labels"], heads, mask),
                                     config.train.stages[0].loss_weights)
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
