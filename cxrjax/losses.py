"""Losses of the paper: sigmoid cross-entropy (CE/FCE heads) and the Multi-label Softmax Loss.

All functions take logits in any float dtype, compute in float32, and are jit/vmap friendly.
Which head trains with which loss is the model's to say (`models.output_heads`); this module
only knows the losses, by name (`LOSSES`).

Every loss takes an optional ``mask`` shaped like ``labels`` (1 = the label is known, 0 = missing:
the release lacks the class, or it is uncertain under the ``ignore`` policy). A missing label
adds nothing. ``mask=None`` runs exactly the unmasked computation, and an all-ones mask gives
bitwise the same values and gradients (tests/test_losses.py checks both).
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp

# A finite stand-in for -inf: keeps gradients NaN-free when a row has no negative label.
_MASKED = -1e30


def bce(logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Mean sigmoid binary cross-entropy over the known (example, class) cells; 0 if none."""
    x = logits.astype(jnp.float32)
    y = labels.astype(jnp.float32)
    # log(1 + e^-|x|) form: exact for any |x|.
    per = jnp.maximum(x, 0) - x * y + jnp.log1p(jnp.exp(-jnp.abs(x)))
    if mask is None:
        return per.mean()
    known = mask.astype(jnp.float32)
    # The mean of per * known * (cells / known cells), not sum / known cells: with every label
    # known each cell's weight is exactly 1 and the reduction is the unmasked mean, so values
    # and gradients keep its rounding bit for bit (even where XLA folds constants around it).
    weight = known * (known.size / jnp.maximum(known.sum(), 1.0))
    return (per * weight).mean()


def msml_per_example(logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None
                     ) -> tuple[jax.Array, jax.Array]:
    """MSML (paper eq. 2) per example, and whether the example has a positive label.

    E = -(1/|Y|) sum_{l in Y} log(e^{x_l} / (e^{x_l} + sum_{k in N} e^{x_k})), computed as
    mean_{l in Y} [logaddexp(x_l, logsumexp_{k in N} x_k) - x_l]. Y is the known positives and
    N the known negatives: a missing label is neither.
    """
    x = logits.astype(jnp.float32)
    positive = labels.astype(bool)
    not_negative = positive
    if mask is not None:
        known = mask.astype(bool)
        positive = positive & known
        not_negative = positive | ~known
    neg_lse = jax.nn.logsumexp(jnp.where(not_negative, _MASKED, x), axis=-1, keepdims=True)
    per_label = jnp.where(positive, jnp.logaddexp(x, neg_lse) - x, 0.0)
    n_pos = positive.sum(-1)
    return per_label.sum(-1) / jnp.maximum(n_pos, 1), n_pos > 0


def msml(logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Batch MSML: mean over examples with at least one known positive; 0 if there are none."""
    per_example, has_positive = msml_per_example(logits, labels, mask)
    count = has_positive.sum()
    return jnp.where(has_positive, per_example, 0.0).sum() / jnp.maximum(count, 1)


# Every loss by the name the model's head table (`models.HEADS`) gives it.
LOSSES = {"bce": bce, "msml": msml}


def head_losses(logits: Mapping[str, jax.Array], labels: jax.Array,
                loss_of_head: Mapping[str, str], mask: jax.Array | None = None
                ) -> dict[str, jax.Array]:
    """The loss of every head in ``logits``; ``loss_of_head`` (head -> name in LOSSES) says
    which, as ``models.output_heads`` gives it; ``mask`` (as ``labels``; None: all known)."""
    unnamed = set(logits) - set(loss_of_head)
    if unnamed:
        raise ValueError(f"no loss named for head(s) {sorted(unnamed)}; named: "
                         f"{sorted(loss_of_head)}")
    unknown = {loss_of_head[h] for h in logits} - set(LOSSES)
    if unknown:
        raise ValueError(f"unknown loss(es) {sorted(unknown)}; known: {sorted(LOSSES)}")
    return {name: LOSSES[loss_of_head[name]](x, labels, mask) for name, x in logits.items()}


def weighted_total(losses: Mapping[str, jax.Array], weights: Mapping[str, float]) -> jax.Array:
    """sum_h weights[h] * losses[h]; every head needs a weight (0 switches it off)."""
    missing = set(losses) - set(weights)
    if missing:
        raise ValueError(f"loss weights missing for head(s) {sorted(missing)}")
    return sum(weights[name] * value for name, value in losses.items())

