"""Flax backbones against torchvision: same logits and feature maps from ported weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from cxrjax.models import create_classifier, create_trunk, preprocess, trunk_channels
from cxrjax.models.common import BatchNorm

# Test keys use the "rbg" PRNG: on CPU, XLA compiles threefry-based initialisers ~5x slower.


def _nhwc(x: np.ndarray) -> jnp.ndarray:
    return jnp.asarray(x.transpose(0, 2, 3, 1))


def _inputs(batch: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.RandomState(seed).randn(batch, 3, size, size).astype(np.float32)


def _torch_trunk(arch: str, tv: torch.nn.Module) -> torch.nn.Module:
    """The trunk cut as in ../shared/bench/torch_reference.py."""
    if arch.startswith("resnet"):
        return torch.nn.Sequential(*list(tv.children())[:-2])
    if arch.startswith("densenet"):
        return torch.nn.Sequential(tv.features, torch.nn.ReLU())
    return tv.features[:-1]


# The smallest inputs the architectures take (stride 32), VGG's at 64 px: its 2x2 map is
# average-pooled to 7x7 in overlapping windows as torchvision's adaptive pool does.
@pytest.mark.parametrize("arch,size,batch", [
    ("resnet18", 32, 2), ("resnet50", 32, 2), ("densenet121", 32, 2),
    ("vgg16", 64, 1), ("vgg16_bn", 64, 1),
])
def test_eval_logits_and_trunk_features_match_torchvision_with_random_bn_stats(
        arch, size, batch, tv_model, ported):
    x = _inputs(batch, size)
    tv = tv_model(arch)
    with torch.no_grad():
        ref = tv(torch.from_numpy(x)).numpy()
        ref_feats = _torch_trunk(arch, tv)(torch.from_numpy(x)).numpy().transpose(0, 2, 3, 1)
    model = create_classifier(arch)

    @jax.jit
    def run(v, x):  # one compile gives both the logits and the trunk's output
        out, inter = model.apply(v, x, train=False, mutable=["intermediates"],
                                 capture_intermediates=lambda mdl, _: mdl.name == "trunk")
        return out, inter["intermediates"]["trunk"]["__call__"][0]

    out, feats = run(ported(arch), _nhwc(x))
    assert out.shape == ref.shape == (batch, 1000)
    assert np.abs(ref).max() > 0.05  # a non-trivial comparison
    np.testing.assert_allclose(np.asarray(out), ref, atol=1e-4, rtol=0)
    assert feats.shape == ref_feats.shape and feats.shape[-1] == trunk_channels(arch)
    np.testing.assert_allclose(np.asarray(feats), ref_feats, atol=1e-4, rtol=0)


def test_train_mode_uses_batch_statistics_like_torchvision(tv_model, ported):
    tv = tv_model("resnet18")
    x = _inputs(4, 32, seed=1)
    saved = {k: v.clone() for k, v in tv.state_dict().items()}
    tv.train()
    try:
        with torch.no_grad():
            ref = tv(torch.from_numpy(x)).numpy()
            ref_mean = tv.layer1[0].bn1.running_mean.numpy().copy()
    finally:
        tv.load_state_dict(saved)  # the cached model is shared with other tests
        tv.eval()
    variables = ported("resnet18")
    model = create_classifier("resnet18")
    out, updates = model.apply(variables, _nhwc(x), train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(np.asarray(out), ref, atol=1e-4, rtol=0)
    # Running means follow torch's momentum 0.1 update; (our running var uses the biased batch
    # variance, torch's the unbiased one: a factor n/(n-1), n = B*H*W, documented in common.py).
    new_mean = updates["batch_stats"]["trunk"]["layer1_0"]["bn1"]["mean"]
    np.testing.assert_allclose(np.asarray(new_mean), ref_mean, atol=1e-5)


def test_standalone_trunk_gives_the_classifier_trunk_features(ported):
    v = ported("resnet18")
    x = jnp.asarray(_inputs(1, 32, seed=2).transpose(0, 2, 3, 1))
    trunk_vars = {"params": v["params"]["trunk"], "batch_stats": v["batch_stats"]["trunk"]}
    feats = create_trunk("resnet18").apply(trunk_vars, x, train=False)
    _, inter = create_classifier("resnet18").apply(
        v, x, mutable=["intermediates"], capture_intermediates=lambda mdl, _: mdl.name == "trunk")
    expected = inter["intermediates"]["trunk"]["__call__"][0]
    np.testing.assert_array_equal(np.asarray(feats), np.asarray(expected))


@pytest.mark.parametrize("arch,hw,channels", [
    ("resnet18", 7, 512), ("resnet34", 7, 512), ("resnet50", 7, 2048),
    ("densenet121", 7, 1024), ("vgg16", 14, 512), ("vgg16_bn", 14, 512),
])
def test_trunk_output_shape_at_224(arch, hw, channels):
    trunk = create_trunk(arch)
    x = jnp.zeros((1, 224, 224, 3))
    shapes = jax.eval_shape(lambda: trunk.init_with_output(jax.random.key(0), x, train=False))
    assert shapes[0].shape == (1, hw, hw, channels) == (1, hw, hw, trunk_channels(arch))


def test_bfloat16_compute_keeps_float32_params_and_close_logits():
    arch = "densenet_tiny"
    x = jax.random.normal(jax.random.key(1, impl="rbg"), (2, 32, 32, 3))
    f32, bf16 = create_classifier(arch, 5), create_classifier(arch, 5, dtype=jnp.bfloat16)
    variables = jax.jit(f32.init)(jax.random.key(0, impl="rbg"), x)
    bf16_shapes = jax.eval_shape(bf16.init, jax.random.key(0, impl="rbg"), x)
    assert {leaf.dtype for leaf in jax.tree.leaves(bf16_shapes)} == {jnp.dtype(jnp.float32)}
    a, b = jax.jit(f32.apply)(variables, x), jax.jit(bf16.apply)(variables, x)
    assert b.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=0.1 * float(jnp.abs(a).max()))


def test_classifier_tree_has_trunk_and_head_and_torch_batchnorm_settings():
    for arch, head in (("resnet_tiny", "fc"), ("densenet_tiny", "classifier"),
                       ("vgg_tiny", "classifier_6")):
        model = create_classifier(arch, 3)
        variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
        assert set(variables["params"]) == {"trunk", "head"}
        assert variables["params"]["head"][head]["kernel"].shape[-1] == 3
    # torchvision's BatchNorm2d: momentum 0.1 (= flax 0.9), eps 1e-5.
    assert BatchNorm.keywords["momentum"] == 0.9 and BatchNorm.keywords["epsilon"] == 1e-5


def test_unknown_arch_is_refused_with_the_known_names():
    with pytest.raises(ValueError, match="unknown architecture 'resnet19'.*resnet18"):
        create_classifier("resnet19")


def test_preprocess_scales_replicates_and_normalises():
    img = np.array([[[0, 255], [128, 64]]], np.uint8)  # (1, 2, 2)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    expected = (img[..., None] / 255.0 - mean) / std
    for x in (img, img[..., None]):
        out = jax.jit(preprocess)(jnp.asarray(x))
        assert out.shape == (1, 2, 2, 3) and out.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(out), expected, atol=1e-6)
    assert preprocess(jnp.asarray(img), jnp.bfloat16).dtype == jnp.bfloat16


def test_preprocess_refuses_bad_shapes():
    with pytest.raises(ValueError, match="preprocess"):
        preprocess(jnp.zeros((2, 8, 8, 2), jnp.uint8))
