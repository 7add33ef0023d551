"""The paper's model family: heads, outputs and parameter trees of every combination, config
checks, compute dtype, pretrained init."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from cxrjax import losses
from cxrjax.models import (
    HEADS,
    build_model,
    check_model_config,
    compute_dtype,
    create_classifier,
    load_pretrained_trunks,
    output_heads,
    probabilities,
)
from cxrjax.models.port import save_variables

KEY = jax.random.key(0, impl="rbg")  # rbg: much faster to compile on CPU than threefry


def cfg(**kw) -> ml_collections.ConfigDict:
    base = dict(trunk_a="resnet_tiny", trunk_b=None, head_a="ce", head_b=None, bilinear=False,
                bilinear_dim=16, bilinear_reduce=None, num_classes=14)
    base.update(kw)
    return ml_collections.ConfigDict(base)


TWO_STREAMS = {"trunk_a", "trunk_b", "head_a", "head_b", "bilinear", "head_fce"}
F_MSML_HEADS = {"ce": "bce", "msml": "msml", "fce": "bce"}
# paper row -> (config fields, {output key: loss name} in output order, top-level params)
FAMILY = {
    "R18": (dict(), {"ce": "bce"}, {"trunk_a", "head_a"}),
    "R18-BL": (dict(head_a=None, bilinear=True), {"fce": "bce"},
               {"trunk_a", "bilinear", "head_fce"}),
    "R18+R18-BL": (dict(trunk_b="resnet_tiny", head_b="ce", bilinear=True),
                   {"ce": "bce", "ce_b": "bce", "fce": "bce"}, TWO_STREAMS),
    "R18+R18-F-MSML": (dict(trunk_b="resnet_tiny", head_b="msml", bilinear=True), F_MSML_HEADS,
                       TWO_STREAMS),
    "D121+D121-F-MSML": (dict(trunk_a="densenet_tiny", trunk_b="densenet_tiny", head_b="msml",
                              bilinear=True, bilinear_reduce=4), F_MSML_HEADS, TWO_STREAMS),
    "R18+VGG-F-MSML": (dict(trunk_b="vgg_tiny", head_b="msml", bilinear=True), F_MSML_HEADS,
                       TWO_STREAMS),
}


def _images(b=2, size=32, seed=0):
    return jnp.asarray(np.random.RandomState(seed).randint(0, 256, (b, size, size, 1)), jnp.uint8)


@pytest.mark.parametrize("row", list(FAMILY))
def test_family_outputs_are_the_named_heads_and_parameter_tree(row):
    fields, heads, tops = FAMILY[row]
    assert list(output_heads(cfg(**fields)).items()) == list(heads.items())  # order too
    model = build_model(cfg(**fields), jnp.float32)
    assert output_heads(model) == heads  # a built model names the same heads as its config
    out, variables = jax.jit(lambda k, x: model.init_with_output(k, x, train=False))(
        KEY, _images())
    assert set(out) == set(heads)
    for v in out.values():
        assert v.shape == (2, 14) and v.dtype == jnp.float32 and bool(jnp.isfinite(v).all())
    assert set(variables["params"]) == tops
    assert {t for t in tops if t.startswith("trunk_")} == set(variables["batch_stats"])
    if fields.get("bilinear_reduce"):
        assert set(variables["params"]["bilinear"]) == {"reduce_a", "reduce_b", "proj"}
        assert variables["params"]["bilinear"]["proj"]["kernel"].shape == (16, 16)


def test_paper_rows_at_224_have_expected_shapes():
    rows = [cfg(trunk_a="resnet18", trunk_b="resnet18", head_b="msml", bilinear=True,
                bilinear_dim=512),
            cfg(trunk_a="densenet121", trunk_b="vgg16", head_b="msml", bilinear=True,
                bilinear_dim=512, bilinear_reduce=256)]
    x = jnp.zeros((1, 224, 224, 1), jnp.uint8)
    for c, n_bil in zip(rows, (512 * 512, 256 * 256), strict=True):
        out, v = jax.eval_shape(lambda c=c: build_model(c, jnp.bfloat16).init_with_output(KEY, x))
        assert {k: o.shape for k, o in out.items()} == {k: (1, 14) for k in ("ce", "msml", "fce")}
        assert v["params"]["bilinear"]["proj"]["kernel"].shape == (n_bil, 512)
        assert {leaf.dtype for leaf in jax.tree.leaves(v)} == {jnp.dtype(jnp.float32)}


@pytest.fixture(scope="module")
def fmsml():
    """R18 + R18-F-MSML with tiny trunks (float32) and its initial variables, built once."""
    c = cfg(trunk_b="resnet_tiny", head_b="msml", bilinear=True)
    model = build_model(c, jnp.float32)
    return c, model, jax.jit(model.init)(KEY, _images())


def test_train_mode_updates_both_trunks_batch_statistics(fmsml):
    c, _, variables = fmsml
    model = build_model(c, jnp.bfloat16)  # bfloat16 compute, float32 variables
    out, upd = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(
        variables, _images(seed=1))
    assert all(o.dtype == jnp.float32 for o in out.values())
    for t in ("trunk_a", "trunk_b"):
        old, new = variables["batch_stats"][t]["bn1"]["mean"], upd["batch_stats"][t]["bn1"]["mean"]
        assert not np.allclose(np.asarray(old), np.asarray(new))


def test_dense_scan_chunk_reaches_the_densenet_trunk_only_and_keeps_the_logits():
    fields = dict(trunk_a="densenet_tiny", trunk_b="resnet_tiny", head_b="msml", bilinear=True,
                  bilinear_reduce=4)
    unrolled = build_model(cfg(**fields), jnp.float32)
    scanned = build_model(cfg(**fields, dense_scan_chunk=2), jnp.float32)
    assert (unrolled.dense_scan_chunk, scanned.dense_scan_chunk) == (0, 2)
    variables = jax.jit(unrolled.init)(KEY, _images())
    lowered = jax.jit(lambda v, x: scanned.apply(v, x)).lower(variables, _images(seed=3))
    lowered_u = jax.jit(lambda v, x: unrolled.apply(v, x)).lower(variables, _images(seed=3))
    assert "while" in lowered.as_text() and "while" not in lowered_u.as_text()
    out_u = lowered_u.compile()(variables, _images(seed=3))
    out_s = lowered.compile()(variables, _images(seed=3))
    for head in out_u:
        np.testing.assert_allclose(np.asarray(out_s[head]), np.asarray(out_u[head]), atol=1e-5)


def test_frozen_trunks_use_and_keep_running_statistics_in_train_mode(fmsml):
    _, model, variables = fmsml
    x = _images(seed=2)
    out, upd = jax.jit(lambda v, x: model.apply(v, x, train=True, train_trunks=False,
                                                mutable=["batch_stats"]))(variables, x)
    jax.tree.map(np.testing.assert_array_equal, upd["batch_stats"], variables["batch_stats"])
    ref = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    for k in ref:
        np.testing.assert_allclose(np.asarray(out[k]), np.asarray(ref[k]), atol=1e-6)


def test_every_head_trains_with_a_known_loss():
    for options in HEADS.values():
        for head in options.values():
            assert head.loss in losses.LOSSES, head


@pytest.mark.parametrize("fields,match", [
    (dict(head_b="msml"), r"model.head_b='msml' needs a second stream: model.trunk_b is None"),
    (dict(trunk_a="resnet19"), r"model.trunk_a='resnet19': unknown architecture; known: "),
    (dict(trunk_a=None), r"model.trunk_a=None: unknown architecture"),
    (dict(head_a="msml"), r"model.head_a='msml': expected 'ce' or None"),
    (dict(trunk_b="resnet_tiny", head_b="bce"),
     r"model.head_b='bce': expected 'ce', 'msml' or None"),
    (dict(head_a=None), r"model has no head: set model.head_a, model.head_b or model.bilinear"),
    (dict(trunk_b="resnet_tiny"), r"model.trunk_b='resnet_tiny' is set but nothing uses it"),
    (dict(bilinear=True, bilinear_dim=0), r"model.bilinear_dim=0: must be positive"),
    (dict(bilinear=True, bilinear_reduce=-1), r"model.bilinear_reduce=-1: must be positive"),
    (dict(num_classes=0), r"model.num_classes=0: must be positive"),
    (dict(trunk_a="densenet_tiny", dense_scan_chunk=-1),
     r"model.dense_scan_chunk=-1: must be 0 \(unrolled\) or positive"),
    (dict(trunk_b="vgg_tiny", head_b="ce", dense_scan_chunk=4),
     r"model.dense_scan_chunk=4 has no effect: no trunk is a DenseNet; set it to 0"),
])
def test_inconsistent_model_configs_are_one_line_errors_naming_the_field(fields, match):
    with pytest.raises(ValueError, match=match) as err:
        check_model_config(cfg(**fields))
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=match):  # build_model checks through the same function
        build_model(cfg(**fields), jnp.float32)


def test_compute_dtype_auto_is_float32_on_cpu_bfloat16_elsewhere_and_unknown_names_fail():
    on_cpu = jax.default_backend() == "cpu"
    assert compute_dtype("auto") == (jnp.float32 if on_cpu else jnp.bfloat16)
    assert compute_dtype("bfloat16") == jnp.bfloat16 and compute_dtype("float32") == jnp.float32
    with pytest.raises(ValueError, match="dtype='float16': expected 'auto', 'float32' or "):
        compute_dtype("float16")


def test_probabilities_fuse_ce_and_fce_and_skip_missing_heads():
    logits = {"ce": jnp.array([[0.0, 2.0]]), "msml": jnp.array([[5.0, -5.0]]),
              "fce": jnp.array([[1.0, -1.0]])}
    p = probabilities(logits)
    sig = lambda x: 1 / (1 + np.exp(-np.asarray(x)))  # noqa: E731
    np.testing.assert_allclose(np.asarray(p["fused"]), (sig([[0, 2]]) + sig([[1, -1]])) / 2,
                               rtol=1e-6)
    assert set(p) == {"ce", "msml", "fce", "fused"}
    np.testing.assert_allclose(np.asarray(probabilities({"ce": logits["ce"]})["fused"]),
                               sig([[0, 2]]), rtol=1e-6)
    only_fce = probabilities({"fce": logits["fce"]}, fusion=("ce",))  # none present: first head
    np.testing.assert_allclose(np.asarray(only_fce["fused"]), sig([[1, -1]]), rtol=1e-6)


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """A 'ported' resnet_tiny classifier file (random weights, non-trivial statistics)."""
    model = create_classifier("resnet_tiny")
    v = jax.jit(model.init)(jax.random.key(7, impl="rbg"), jnp.zeros((1, 32, 32, 3)))
    v = jax.tree.map(lambda x: x + 0.25, v)  # statistics differ from the fresh 0 / 1
    path = str(tmp_path_factory.mktemp("w") / "resnet_tiny.npz")
    save_variables(path, v, arch="resnet_tiny")
    return path, v


def test_fmsml_trunks_are_distinct_trees_loaded_equal(tiny_weights, fmsml):
    path, src = tiny_weights
    c, model, variables = fmsml
    loaded = load_pretrained_trunks(variables, c, {"resnet_tiny": path})
    for col in ("params", "batch_stats"):
        a, b = loaded[col]["trunk_a"], loaded[col]["trunk_b"]
        for la, lb, ls in zip(jax.tree.leaves(a), jax.tree.leaves(b),
                              jax.tree.leaves(src[col]["trunk"]), strict=True):
            np.testing.assert_array_equal(np.asarray(la), np.asarray(ls))
            np.testing.assert_array_equal(np.asarray(lb), np.asarray(ls))
            assert la.unsafe_buffer_pointer() != lb.unsafe_buffer_pointer()
    for head in ("head_a", "head_b", "bilinear", "head_fce"):
        jax.tree.map(np.testing.assert_array_equal, loaded["params"][head],
                     variables["params"][head])
    out = jax.jit(lambda v, x: model.apply(v, x))(loaded, _images())
    assert set(out) == {"ce", "msml", "fce"}


def test_missing_pretrained_file_names_the_command_that_makes_it(tmp_path):
    c = cfg(trunk_a="resnet18")
    path = str(tmp_path / "resnet18.npz")
    with pytest.raises(FileNotFoundError, match=f"python scripts/port_torchvision.py --arch "
                                                f"resnet18 --out {path}"):
        load_pretrained_trunks({"params": {}}, c, {"resnet18": path})
    with pytest.raises(ValueError, match="no pretrained weights file given for trunk_a"):
        load_pretrained_trunks({"params": {}}, c, {})


def test_pretrained_file_of_another_arch_or_shape_is_refused(tiny_weights, tmp_path):
    path, src = tiny_weights
    c = cfg(trunk_a="densenet_tiny")
    model = build_model(c, jnp.float32)
    variables = jax.eval_shape(model.init, KEY, _images())
    with pytest.raises(ValueError, match="holds resnet_tiny weights, but model.trunk_a is "
                                         "densenet_tiny"):
        load_pretrained_trunks(variables, c, {"densenet_tiny": path})
    anonymous = str(tmp_path / "anon.npz")
    save_variables(anonymous, src)
    with pytest.raises(ValueError, match="trunk weights do not fit; missing .*conv0"):
        load_pretrained_trunks(variables, c, {"densenet_tiny": anonymous})
