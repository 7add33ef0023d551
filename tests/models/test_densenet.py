"""DenseNet's scanned dense blocks: the unrolled blocks' variables, outputs, statistics and
gradients, on the tiny variant and on DenseNet121 against torchvision."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from cxrjax.models.densenet import DenseNetTrunk

KEY = jax.random.key(0, impl="rbg")
TINY = dict(block_config=(1, 2, 3, 2), growth=4, init_features=8, bn_size=2)
CHUNK = 2  # blocks of 1 and 2 layers are one chunk each; the 3-layer block splits 2 + 1


def _max_diff(a, b) -> float:
    return max(float(np.max(np.abs(np.asarray(x, np.float32) - np.asarray(y, np.float32))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


@pytest.fixture(scope="module")
def tiny_inputs():
    x = jnp.asarray(np.random.RandomState(0).randn(4, 32, 32, 3), jnp.float32)
    return x, DenseNetTrunk(**TINY).init(KEY, x, False)


def _train_step(model, variables, x):
    """Jitted: the summed squared features' gradient, the features and the updated statistics."""
    def loss(params):
        out, upd = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                               True, mutable=["batch_stats"])
        return jnp.sum(out ** 2), (out, upd)

    (_, (out, stats)), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(
        variables["params"])
    return out, stats, grads


@pytest.fixture(scope="module")
def unrolled_step(tiny_inputs):
    x, variables = tiny_inputs
    return _train_step(DenseNetTrunk(**TINY), variables, x)


def test_scanned_blocks_declare_the_unrolled_variables_with_the_same_initial_values(tiny_inputs):
    x, unrolled = tiny_inputs
    scanned = DenseNetTrunk(**TINY, scan_chunk=CHUNK).init(KEY, x, False)
    assert jax.tree.structure(scanned) == jax.tree.structure(unrolled)
    for a, b in zip(jax.tree.leaves(scanned), jax.tree.leaves(unrolled), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_scanned_blocks_give_the_unrolled_outputs_statistics_and_gradients(tiny_inputs,
                                                                          unrolled_step):
    x, variables = tiny_inputs
    unrolled, scanned = DenseNetTrunk(**TINY), DenseNetTrunk(**TINY, scan_chunk=CHUNK)
    out_u, stats_u, grads_u = unrolled_step
    out_s, stats_s, grads_s = _train_step(scanned, variables, x)
    assert float(jnp.max(jnp.abs(out_u))) > 0.5  # a non-trivial comparison
    assert _max_diff(out_s, out_u) < 1e-5
    assert _max_diff(stats_s, stats_u) < 1e-6  # every layer's running mean and variance moved
    assert _max_diff(stats_u, {"batch_stats": variables["batch_stats"]}) > 1e-3
    scale = max(float(np.max(np.abs(g))) for g in jax.tree.leaves(grads_u))
    assert _max_diff(grads_s, grads_u) < 1e-5 * scale
    trained = {"params": variables["params"], **stats_u}
    reference = unrolled.apply(trained, x, False)  # features up to ~30: float32 ulps there ~2e-6
    assert _max_diff(scanned.apply(trained, x, False), reference) < \
        1e-6 * float(jnp.max(jnp.abs(reference)))


def test_scanned_densenet121_matches_torchvision_in_eval_and_train_mode(tv_model, ported):
    """Real architecture: DenseNet121's blocks as scans of 8 layers (6 = 6, 12 = 8 + 4, ...), at
    64 px: at 32 its last block's train-mode BatchNorm sees 2 values a channel, too few for a
    float32 comparison."""
    tv = tv_model("densenet121")
    x = np.random.RandomState(3).randn(2, 3, 64, 64).astype(np.float32)
    variables = ported("densenet121")
    trunk = {"params": variables["params"]["trunk"],
             "batch_stats": variables["batch_stats"]["trunk"]}
    model = DenseNetTrunk((6, 12, 24, 16), scan_chunk=8)
    saved = {k: v.clone() for k, v in tv.state_dict().items()}
    try:
        with torch.no_grad():
            ref_eval = torch.relu(tv.features(torch.from_numpy(x))).numpy()
            tv.train()
            ref_train = torch.relu(tv.features(torch.from_numpy(x))).numpy()
            last = tv.features.denseblock3.denselayer24
            ref_mean = (last.norm1.running_mean.numpy().copy(),
                        last.norm2.running_mean.numpy().copy())
    finally:
        tv.load_state_dict(saved)  # the cached model is shared with other tests
        tv.eval()
    nhwc = jnp.asarray(x.transpose(0, 2, 3, 1))
    out_eval = jax.jit(lambda v, x: model.apply(v, x, False))(trunk, nhwc)
    out_train, upd = jax.jit(lambda v, x: model.apply(v, x, True, mutable=["batch_stats"]))(
        trunk, nhwc)
    assert np.abs(ref_eval).max() > 0.05
    np.testing.assert_allclose(np.asarray(out_eval), ref_eval.transpose(0, 2, 3, 1), atol=1e-4)
    np.testing.assert_allclose(np.asarray(out_train), ref_train.transpose(0, 2, 3, 1), atol=1e-4)
    layer = upd["batch_stats"]["denseblock3"]["denselayer24"]
    assert layer["norm1"]["mean"].shape == (256 + 23 * 32,)
    np.testing.assert_allclose(np.asarray(layer["norm1"]["mean"]), ref_mean[0], atol=1e-5)
    np.testing.assert_allclose(np.asarray(layer["norm2"]["mean"]), ref_mean[1], atol=1e-5)
