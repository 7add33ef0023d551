"""Bilinear pooling and the classifier heads against direct NumPy computations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cxrjax.models.heads import Bilinear, GlobalAvgPoolDense, bilinear_pool, match_spatial


def _numpy_bilinear(fa: np.ndarray, fb: np.ndarray) -> np.ndarray:
    """Outer product per location, mean over locations, signed sqrt, L2 - written out in loops."""
    b, h, w, ca = fa.shape
    out = np.zeros((b, ca * fb.shape[-1]))
    for i in range(b):
        acc = np.zeros((ca, fb.shape[-1]))
        for y in range(h):
            for x in range(w):
                acc += np.outer(fa[i, y, x], fb[i, y, x])
        z = (acc / (h * w)).ravel()
        z = np.sign(z) * np.sqrt(np.abs(z) + 1e-10)
        out[i] = z / np.linalg.norm(z)
    return out


def _pool2x2(f: np.ndarray) -> np.ndarray:
    b, h, w, c = f.shape
    return f.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def test_bilinear_pool_matches_numpy_with_unequal_channels():
    rng = np.random.RandomState(0)
    fa, fb = rng.randn(2, 3, 4, 5), rng.randn(2, 3, 4, 7)
    out = jax.jit(bilinear_pool)(jnp.asarray(fa, jnp.float32), jnp.asarray(fb, jnp.float32))
    assert out.shape == (2, 35) and out.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out), _numpy_bilinear(fa, fb), atol=1e-5)


def test_bilinear_pool_averages_the_larger_map_down_to_the_smaller():
    rng = np.random.RandomState(1)
    fa, fb = rng.randn(2, 4, 4, 3), rng.randn(2, 8, 8, 6)  # e.g. ResNet 7x7 beside VGG 14x14
    expected = _numpy_bilinear(fa, _pool2x2(fb))
    for a, b, exp in ((fa, fb, expected), (fb, fa, _numpy_bilinear(_pool2x2(fb), fa))):
        out = bilinear_pool(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))
        np.testing.assert_allclose(np.asarray(out), exp, atol=1e-5)


def test_match_spatial_is_torch_adaptive_average_pool():
    import torch

    x = np.random.RandomState(2).randn(1, 14, 10, 3).astype(np.float32)
    small = np.zeros((1, 7, 4, 2), np.float32)
    _, pooled = match_spatial(jnp.asarray(small), jnp.asarray(x))
    ref = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(x).permute(0, 3, 1, 2), (7, 4))
    np.testing.assert_allclose(np.asarray(pooled), ref.permute(0, 2, 3, 1).numpy(), atol=1e-6)


def test_bilinear_pool_accumulates_bfloat16_maps_in_float32():
    rng = np.random.RandomState(3)
    fa = jnp.asarray(rng.rand(1, 7, 7, 16), jnp.bfloat16)
    fb = jnp.asarray(rng.rand(1, 7, 7, 8), jnp.bfloat16)
    out = bilinear_pool(fa, fb)
    assert out.dtype == jnp.float32
    exact = _numpy_bilinear(np.asarray(fa, np.float64), np.asarray(fb, np.float64))
    np.testing.assert_allclose(np.asarray(out), exact, atol=1e-6)


def test_bilinear_pool_never_builds_the_per_location_outer_product():
    b, h, w, ca, cb = 2, 5, 5, 6, 7
    jaxpr = jax.make_jaxpr(bilinear_pool)(jnp.zeros((b, h, w, ca)), jnp.zeros((b, h, w, cb)))
    sizes = [int(np.prod(v.aval.shape)) for eqn in jaxpr.eqns for v in eqn.outvars]
    assert max(sizes) < b * h * w * ca * cb
    assert max(sizes) == b * ca * cb


def test_bilinear_module_tree_with_reductions_and_self_bilinear():
    x_a, x_b = jnp.ones((2, 3, 3, 10)), jnp.ones((2, 3, 3, 12))
    key = jax.random.key(0, impl="rbg")
    two = Bilinear(dim=16, reduce=4)
    out, v = two.init_with_output(key, x_a, x_b)
    assert out.shape == (2, 16)
    assert set(v["params"]) == {"reduce_a", "reduce_b", "proj"}
    assert v["params"]["proj"]["kernel"].shape == (16, 16)  # 4*4 bilinear features -> 16
    out, v = Bilinear(dim=8).init_with_output(key, x_a)
    assert out.shape == (2, 8) and set(v["params"]) == {"proj"}
    assert v["params"]["proj"]["kernel"].shape == (100, 8)
    _, v = Bilinear(dim=8, reduce=5).init_with_output(key, x_a)
    assert set(v["params"]) == {"reduce_a", "proj"}


def test_self_bilinear_is_symmetric():
    fa = jnp.asarray(np.random.RandomState(4).randn(1, 3, 3, 4), jnp.float32)
    z = np.asarray(bilinear_pool(fa, fa)).reshape(4, 4)
    np.testing.assert_allclose(z, z.T, atol=1e-7)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_global_avg_pool_dense_is_mean_pool_then_linear(dtype):
    feats = jnp.asarray(np.random.RandomState(5).randn(2, 3, 3, 6), dtype)
    head = GlobalAvgPoolDense(4, dtype, dense_name="classifier")
    logits, v = head.init_with_output(jax.random.key(0, impl="rbg"), feats)
    assert logits.shape == (2, 4) and logits.dtype == jnp.float32
    assert set(v["params"]) == {"classifier"}  # the dense layer carries the name it is given
    k, bias = v["params"]["classifier"]["kernel"], v["params"]["classifier"]["bias"]
    ref = np.asarray(feats, np.float32).mean((1, 2)) @ np.asarray(k) + np.asarray(bias)
    np.testing.assert_allclose(np.asarray(logits), ref, atol=1e-5 if dtype == jnp.float32 else 0.05)
