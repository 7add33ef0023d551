"""Tests of cxrjax.losses against NumPy transcriptions, finite differences and closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from scipy.special import logsumexp

from cxrjax import losses


def msml_numpy(x: np.ndarray, y: np.ndarray) -> float:
    """Direct transcription of the paper's eq. (2), one example at a time, in float64."""
    values = []
    for xi, yi in zip(x.astype(np.float64), y.astype(bool), strict=True):
        if not yi.any():
            continue
        neg = np.exp(xi[~yi]).sum()
        terms = [-np.log(np.exp(xi[l]) / (np.exp(xi[l]) + neg)) for l in np.flatnonzero(yi)]
        values.append(np.mean(terms))
    return float(np.mean(values)) if values else 0.0


def msml_logspace(x: np.ndarray, y: np.ndarray) -> float:
    """Eq. (2) in log space (float64): -log p_l = logsumexp([x_l, negatives]) - x_l."""
    values = []
    for xi, yi in zip(x.astype(np.float64), y.astype(bool), strict=True):
        if yi.any():
            values.append(np.mean([logsumexp(np.append(xi[~yi], xi[l])) - xi[l]
                                   for l in np.flatnonzero(yi)]))
    return float(np.mean(values)) if values else 0.0


def random_batch(seed: int, n: int = 32, c: int = 14, p: float = 0.2):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, c)).astype(np.float32) * 3
    y = (rng.random((n, c)) < p).astype(np.float32)
    y[0] = 0  # no finding
    y[1] = 1  # every finding
    y[2] = 0
    y[2, 3] = 1  # exactly one
    return x, y


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_msml_matches_numpy_transcription_including_edge_rows(seed):
    x, y = random_batch(seed)
    np.testing.assert_allclose(losses.msml(x, y), msml_numpy(x, y), rtol=1e-5, atol=1e-6)


def test_msml_ignores_examples_without_positive_labels_in_the_mean():
    x, y = random_batch(0)
    x2 = np.concatenate([x, np.random.default_rng(5).normal(size=(10, 14)).astype(np.float32)])
    y2 = np.concatenate([y, np.zeros((10, 14), np.float32)])
    np.testing.assert_allclose(losses.msml(x2, y2), losses.msml(x, y), rtol=1e-6)


def test_msml_of_batch_without_positives_is_zero_with_zero_gradient():
    x = np.random.default_rng(0).normal(size=(4, 14)).astype(np.float32)
    y = np.zeros((4, 14), np.float32)
    assert float(losses.msml(x, y)) == 0.0
    assert np.all(np.asarray(jax.grad(losses.msml)(x, y)) == 0.0)


def test_msml_of_all_positive_example_is_zero_with_finite_gradient():
    x = np.random.default_rng(0).normal(size=(1, 14)).astype(np.float32)
    y = np.ones((1, 14), np.float32)
    assert float(losses.msml(x, y)) == 0.0
    g = np.asarray(jax.grad(losses.msml)(x, y))
    assert np.all(np.isfinite(g)) and np.all(g == 0.0)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_msml_and_bce_are_finite_for_huge_logits(dtype):
    x, y = random_batch(3)
    x = (np.sign(x) * 1e4).astype(np.float32)
    xj = jnp.asarray(x, dtype)
    for fn in (losses.msml, losses.bce):
        value, grad = jax.value_and_grad(fn)(xj, y)
        assert np.isfinite(float(value)), fn.__name__
        assert np.all(np.isfinite(np.asarray(grad, np.float32))), fn.__name__
    # The float32 value agrees with a log-space float64 transcription at this scale.
    np.testing.assert_allclose(losses.msml(x, y), msml_logspace(x, y), rtol=1e-5)


def test_msml_gradient_matches_finite_differences():
    x, y = random_batch(4, n=6)
    check_grads(lambda z: losses.msml(z, y), (jnp.asarray(x, jnp.float32),), order=1,
                modes=("rev",), atol=2e-2, rtol=2e-2)


def test_msml_gradient_matches_closed_form():
    """dE/dx_l = (p_l - 1)/|Y| for positive l, and sum_l e^{x_k}/(e^{x_l}+S)/|Y| for negative k."""
    x, y = random_batch(5)
    x64, yb = x.astype(np.float64), y.astype(bool)
    expected = np.zeros_like(x64)
    with_pos = yb.any(1)
    for i in np.flatnonzero(with_pos):
        pos, neg = np.flatnonzero(yb[i]), np.flatnonzero(~yb[i])
        s = np.exp(x64[i, neg]).sum()
        denom = np.exp(x64[i, pos]) + s  # (|Y|,)
        expected[i, pos] = (np.exp(x64[i, pos]) / denom - 1) / len(pos)
        expected[i, neg] = np.exp(x64[i, neg]) * (1 / denom).sum() / len(pos)
    expected /= with_pos.sum()
    got = np.asarray(jax.grad(losses.msml)(jnp.asarray(x), y))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-7)


def test_msml_is_jittable_and_vmappable_over_batches():
    x, y = random_batch(6)
    xs, ys = np.stack([x, x[::-1]]), np.stack([y, y[::-1]])
    batched = jax.jit(jax.vmap(losses.msml))(xs, ys)
    np.testing.assert_allclose(batched, [msml_numpy(x, y), msml_numpy(x[::-1], y[::-1])],
                               rtol=1e-5)


def test_bce_matches_numpy_formula():
    x, y = random_batch(7)
    x64 = x.astype(np.float64)
    p = 1 / (1 + np.exp(-x64))
    expected = -(y * np.log(p) + (1 - y) * np.log(1 - p)).mean()
    np.testing.assert_allclose(losses.bce(x, y), expected, rtol=1e-5)


def test_f_msml_weights_give_the_objective_of_section_2_3():
    """alpha * (E_MSML + E_CE) + beta * E_FCE with the paper's alpha=0.2, beta=0.6."""
    x, y = random_batch(8)
    logits = {"ce": x, "msml": x[::-1], "fce": x * 0.5}
    per_head = losses.head_losses(logits, y, {"ce": "bce", "msml": "msml", "fce": "bce"})
    total = losses.weighted_total(per_head, {"ce": 0.2, "msml": 0.2, "fce": 0.6})
    expected = 0.2 * (msml_numpy(x[::-1], y) + float(losses.bce(x, y))) + 0.6 * float(
        losses.bce(x * 0.5, y))
    np.testing.assert_allclose(total, expected, rtol=1e-5)


def test_head_losses_use_the_loss_named_for_each_head():
    x, y = random_batch(10)
    per_head = losses.head_losses({"a": x, "b": x}, y, {"a": "msml", "b": "bce", "unused": "bce"})
    assert set(per_head) == {"a", "b"}
    np.testing.assert_allclose(per_head["a"], msml_numpy(x, y), rtol=1e-5)
    np.testing.assert_allclose(per_head["b"], losses.bce(x, y), rtol=1e-6)


def test_head_losses_reject_unnamed_head_unknown_loss_and_missing_weight():
    x, y = random_batch(9)
    with pytest.raises(ValueError, match=r"no loss named for head\(s\) \['bogus'\]"):
        losses.head_losses({"bogus": x}, y, {"ce": "bce"})
    with pytest.raises(ValueError,
                       match=r"unknown loss\(es\) \['focal'\]; known: \['bce', 'msml'\]"):
        losses.head_losses({"ce": x}, y, {"ce": "focal"})
    with pytest.raises(ValueError, match="weights missing"):
        losses.weighted_total({"ce": 1.0, "fce": 2.0}, {"ce": 1.0})


# ------------------------------------------------------------------ masks ---

def masked_batch(seed: int, n: int = 32, c: int = 14, p_missing: float = 0.3):
    x, y = random_batch(seed, n, c)
    mask = (np.random.default_rng(seed + 100).random((n, c)) >= p_missing).astype(np.float32)
    mask[3] = 0  # nothing known
    mask[4] = 1
    mask[4, y[4] == 0] = 0  # positives known, no known negative
    return x, y, mask


def bce_masked_numpy(x, y, mask) -> float:
    """Mean float64 BCE over the known cells only."""
    x64, known = x.astype(np.float64), mask.astype(bool)
    p = 1 / (1 + np.exp(-x64))
    per = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    return float(per[known].mean()) if known.any() else 0.0


def msml_masked_numpy(x, y, mask) -> float:
    """Eq. (2) in float64 over known positives against known negatives, one example at a time."""
    values = []
    for xi, yi, ki in zip(x.astype(np.float64), y.astype(bool), mask.astype(bool), strict=True):
        pos, neg = np.flatnonzero(yi & ki), np.flatnonzero(~yi & ki)
        if len(pos):
            values.append(np.mean([logsumexp(np.append(xi[neg], xi[l])) - xi[l] for l in pos]))
    return float(np.mean(values)) if values else 0.0


@pytest.mark.parametrize("seed", [0, 1])
def test_masked_losses_match_float64_references(seed):
    x, y, mask = masked_batch(seed)
    np.testing.assert_allclose(losses.bce(x, y, mask), bce_masked_numpy(x, y, mask), rtol=1e-5)
    np.testing.assert_allclose(losses.msml(x, y, mask), msml_masked_numpy(x, y, mask),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fn", [losses.bce, losses.msml], ids=["bce", "msml"])
def test_a_missing_label_adds_nothing_and_gets_no_gradient(fn):
    x, y, mask = masked_batch(2)
    missing = mask == 0
    x2, y2 = x.copy(), y.copy()
    x2[missing] = np.random.default_rng(9).normal(size=missing.sum()) * 10
    y2[missing] = 1 - y2[missing]  # a missing positive is not a negative, nor the reverse
    np.testing.assert_allclose(fn(x2, y2, mask), fn(x, y, mask), rtol=1e-6)
    grad = np.asarray(jax.grad(fn)(jnp.asarray(x), y, mask))
    assert np.all(grad[missing] == 0.0) and np.all(np.isfinite(grad))


@pytest.mark.parametrize("fn", [losses.bce, losses.msml], ids=["bce", "msml"])
def test_masked_gradients_match_finite_differences(fn):
    x, y, mask = masked_batch(4, n=6)
    check_grads(lambda z: fn(z, y, mask), (jnp.asarray(x, jnp.float32),), order=1,
                modes=("rev",), atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("fn", [losses.bce, losses.msml], ids=["bce", "msml"])
def test_an_all_missing_batch_is_zero_with_zero_gradient(fn):
    x, y, _ = masked_batch(5)
    none_known = np.zeros_like(y)
    value, grad = jax.value_and_grad(fn)(jnp.asarray(x), y, none_known)
    assert float(value) == 0.0 and np.all(np.asarray(grad) == 0.0)


def _old_bce(logits, labels):
    """The unmasked BCE formula as it was before masks, kept to compare bit for bit."""
    x = logits.astype(jnp.float32)
    y = labels.astype(jnp.float32)
    per = jnp.maximum(x, 0) - x * y + jnp.log1p(jnp.exp(-jnp.abs(x)))
    return per.mean()


def _old_msml(logits, labels):
    """The unmasked MSML formula as it was before masks, kept to compare bit for bit."""
    x = logits.astype(jnp.float32)
    positive = labels.astype(bool)
    neg_lse = jax.nn.logsumexp(jnp.where(positive, -1e30, x), axis=-1, keepdims=True)
    per_label = jnp.where(positive, jnp.logaddexp(x, neg_lse) - x, 0.0)
    n_pos = positive.sum(-1)
    per_example, has_positive = per_label.sum(-1) / jnp.maximum(n_pos, 1), n_pos > 0
    return jnp.where(has_positive, per_example, 0.0).sum() / jnp.maximum(has_positive.sum(), 1)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_nih_head_losses_and_gradients_are_bitwise_unchanged_without_or_with_a_full_mask(dtype):
    """Every head of models.HEADS (CE, CE_b, MSML, FCE) under the F-MSML weights, jitted as in
    the train step: the old formulas, mask=None and an all-ones mask agree bit for bit."""
    from cxrjax import models

    loss_of_head = {head.output: head.loss for by_value in models.HEADS.values()
                    for head in by_value.values()}
    assert set(loss_of_head.values()) == {"bce", "msml"}
    old = {"bce": _old_bce, "msml": _old_msml}
    weights = {name: 0.25 for name in loss_of_head}
    x, y = random_batch(11, n=16)
    logits = {name: jnp.asarray(x * (i + 1), dtype) for i, name in enumerate(loss_of_head)}

    def total_old(lg, labels):
        return sum(weights[n] * old[loss_of_head[n]](v, labels) for n, v in lg.items())

    def total_new(lg, labels, mask):
        return losses.weighted_total(losses.head_losses(lg, labels, loss_of_head, mask), weights)

    # Labels are arguments, as in the train step (closed-over constants would let XLA fold
    # the label arithmetic of one program and not of the other).
    ref_value, ref_grad = jax.jit(jax.value_and_grad(total_old))(logits, y)
    for mask in (None, np.ones_like(y), np.ones(y.shape, np.uint8)):
        value, grad = jax.jit(jax.value_and_grad(total_new))(logits, y, mask)
        assert np.asarray(value).tobytes() == np.asarray(ref_value).tobytes()
        for name in logits:
            assert np.asarray(grad[name]).tobytes() == np.asarray(ref_grad[name]).tobytes(), name
        for name, v in logits.items():  # each head alone, eagerly too
            fn = losses.LOSSES[loss_of_head[name]]
            assert (np.asarray(fn(v, y, mask)).tobytes()
                    == np.asarray(old[loss_of_head[name]](v, y)).tobytes()), name
