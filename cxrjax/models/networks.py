"""The paper's model family (Ge et al., Tables 1-2), built from a config, and its pretrained init.

One module covers every row: one or two trunks, an optional CE head on stream A, an optional CE
or MSML head on stream B and an optional (self-)bilinear FCE head. `HEADS` is the one place that
names the heads and the loss each trains with: the model's output keys, `output_heads()` and
`check_model_config()` all read it.
Parameter tree: `trunk_a`, `trunk_b`, `head_a`, `head_b`, `bilinear`, `head_fce`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from cxrjax.models.common import ARCHS, get_spec, preprocess
from cxrjax.models.heads import Bilinear, GlobalAvgPoolDense


class Head(NamedTuple):
    """One output of the model: its key in the logits dict and its loss (`losses.LOSSES` key)."""

    output: str
    loss: str


# Model config field -> {the field's value that adds the head: Head}, in output order.
HEADS: dict[str, dict[Any, Head]] = {
    "head_a": {"ce": Head("ce", "bce")},  # average pool + dense on stream A
    "head_b": {"ce": Head("ce_b", "bce"), "msml": Head("msml", "msml")},  # ... on stream B
    "bilinear": {True: Head("fce", "bce")},  # (self-)bilinear pooling + dense
}


class PaperNet(nn.Module):
    """uint8 gray images (B,H,W,1) -> {head output name (see HEADS): logits (B, C) float32}."""

    trunk_a: str
    trunk_b: str | None = None
    head_a: str | None = "ce"
    head_b: str | None = None
    bilinear: bool = False
    bilinear_dim: int = 512
    bilinear_reduce: int | None = None
    num_classes: int = 14
    dense_scan_chunk: int = 0  # DenseNet trunks: layers per scanned chunk (0: unrolled)
    dtype: Any = jnp.float32

    def _trunk(self, arch: str, name: str) -> nn.Module:
        """Stream `name`'s trunk, given the model fields its architecture takes."""
        spec = get_spec(arch)
        options = {keyword: getattr(self, field) for field, keyword in spec.trunk_options}
        return spec.trunk(dtype=self.dtype, name=name, **options)

    @nn.compact
    def __call__(self, images: jnp.ndarray, train: bool = False,
                 train_trunks: bool | None = None) -> dict[str, jnp.ndarray]:
        """`train_trunks=False` with `train=True` runs the trunks' BatchNorm on their running
        statistics (and leaves them unchanged): frozen trunks behave exactly as at evaluation.
        None (default) follows `train`."""
        x = preprocess(images, self.dtype)
        t_train = train if train_trunks is None else (train and train_trunks)
        fa = self._trunk(self.trunk_a, "trunk_a")(x, t_train)
        fb = None
        if self.trunk_b is not None:
            fb = self._trunk(self.trunk_b, "trunk_b")(x, t_train)
        out = {}
        if self.head_a is not None:
            out[HEADS["head_a"][self.head_a].output] = GlobalAvgPoolDense(
                self.num_classes, self.dtype, name="head_a")(fa)
        if self.head_b is not None:
            out[HEADS["head_b"][self.head_b].output] = GlobalAvgPoolDense(
                self.num_classes, self.dtype, name="head_b")(fb)
        if self.bilinear:
            z = Bilinear(self.bilinear_dim, self.bilinear_reduce, self.dtype,
                         name="bilinear")(fa, fb)
            out[HEADS["bilinear"][True].output] = nn.Dense(
                self.num_classes, dtype=self.dtype, name="head_fce")(z).astype(jnp.float32)
        return out


def _field(cfg: Any, name: str) -> Any:
    """``cfg.name`` (a model config or a built PaperNet), None where it has no such field."""
    try:
        return getattr(cfg, name)
    except (AttributeError, KeyError):
        return None


def output_heads(model_cfg: Any) -> dict[str, str]:
    """Output name -> loss name of every head of the model `model_cfg` describes, in output order.

    `model_cfg` is a checked model config (see `check_model_config`) or a built PaperNet: both
    carry the fields `head_a`, `head_b` and `bilinear` that HEADS is keyed by.
    """
    added = {"head_a": _field(model_cfg, "head_a"), "head_b": _field(model_cfg, "head_b"),
             "bilinear": True if _field(model_cfg, "bilinear") else None}
    return dict(HEADS[field][value] for field, value in added.items() if value is not None)


def _choices(field: str) -> str:
    """"'ce', 'msml' or None": the values `field` accepts, as the error messages list them."""
    return ", ".join(repr(v) for v in HEADS[field]) + " or None"


def check_model_config(model_cfg: Any) -> None:
    """Raises a one-line ValueError naming the first bad or inconsistent `model.*` field.

    Fields: trunk_a, trunk_b (None: one stream), head_a, head_b (values: HEADS), bilinear
    (self-bilinear of A without trunk_b), bilinear_dim, bilinear_reduce (None), num_classes,
    dense_scan_chunk (0, or positive with a DenseNet trunk).
    """
    trunk_b, head_a, head_b = (_field(model_cfg, f) for f in ("trunk_b", "head_a", "head_b"))
    bilinear = bool(_field(model_cfg, "bilinear"))
    for field in ("trunk_a", "trunk_b"):
        arch = _field(model_cfg, field)
        if (arch is not None or field == "trunk_a") and arch not in ARCHS:
            raise ValueError(f"model.{field}={arch!r}: unknown architecture; known: "
                             f"{', '.join(sorted(ARCHS))}")
    for field, value in (("head_a", head_a), ("head_b", head_b)):
        if value is not None and value not in HEADS[field]:
            raise ValueError(f"model.{field}={value!r}: expected {_choices(field)}")
    if head_b is not None and trunk_b is None:
        raise ValueError(f"model.head_b={head_b!r} needs a second stream: model.trunk_b is None")
    if trunk_b is not None and head_b is None and not bilinear:
        raise ValueError(f"model.trunk_b={trunk_b!r} is set but nothing uses it: set "
                         "model.head_b or model.bilinear")
    if head_a is None and head_b is None and not bilinear:
        raise ValueError("model has no head: set model.head_a, model.head_b or model.bilinear")
    for field in ("bilinear_dim", "bilinear_reduce", "num_classes"):
        value = _field(model_cfg, field)
        if value is not None and int(value) < 1:
            raise ValueError(f"model.{field}={value}: must be positive")
    chunk = _field(model_cfg, "dense_scan_chunk") or 0
    if int(chunk) < 0:
        raise ValueError(f"model.dense_scan_chunk={chunk}: must be 0 (unrolled) or positive")
    takes_chunk = [arch for arch in (_field(model_cfg, "trunk_a"), trunk_b)
                   if arch is not None and "dense_scan_chunk" in dict(get_spec(arch).trunk_options)]
    if int(chunk) > 0 and not takes_chunk:
        raise ValueError(f"model.dense_scan_chunk={chunk} has no effect: no trunk is a DenseNet; "
                         "set it to 0")


def compute_dtype(name: str) -> jnp.dtype:
    """The dtype a model computes in: "auto" is bfloat16 on accelerators and float32 on CPU.

    Parameters stay float32 whatever this is. Any name other than "auto", "float32" and
    "bfloat16" is a one-line ValueError naming the `dtype` field.
    """
    resolved = name
    if name == "auto":
        resolved = "float32" if jax.default_backend() == "cpu" else "bfloat16"
    if resolved not in ("float32", "bfloat16"):
        raise ValueError(f"dtype={name!r}: expected 'auto', 'float32' or 'bfloat16'")
    return jnp.dtype(resolved)


def build_model(model_cfg: Any, dtype: Any = jnp.float32) -> PaperNet:
    """The paper network described by `model_cfg` (ConfigDict or any attribute object).

    Checked first by `check_model_config`; `dtype` is the compute dtype (see `compute_dtype`).
    """
    check_model_config(model_cfg)
    streams = {f: _field(model_cfg, f) for f in ("trunk_a", "trunk_b", "head_a", "head_b")}
    sizes = {f: int(v) for f in ("bilinear_dim", "bilinear_reduce", "num_classes",
                                 "dense_scan_chunk") if (v := _field(model_cfg, f)) is not None}
    return PaperNet(**streams, bilinear=bool(_field(model_cfg, "bilinear")), **sizes,
                    dtype=jnp.dtype(jnp.float32 if dtype is None else dtype))


def probabilities(logits: Mapping[str, jnp.ndarray],
                  fusion: Sequence[str] = ("ce", "fce")) -> dict[str, jnp.ndarray]:
    """Sigmoid of every head's logits, plus `"fused"`: the mean over the `fusion` heads present.

    The paper reports the fusion of the CE baseline and the FCE head (Table 1). Heads in `fusion`
    that the model lacks are skipped; with none present the first head is used. NOTE: the MSML
    head is trained with a ranking loss: sigmoid("msml") orders findings within an image but is
    NOT a calibrated probability - read it as a score, and keep it out of `fusion` for that reason.
    """
    if not logits:
        raise ValueError("probabilities: no logits given")
    probs = {k: jax.nn.sigmoid(v.astype(jnp.float32)) for k, v in logits.items()}
    present = [h for h in fusion if h in probs] or [next(iter(probs))]
    probs["fused"] = sum(probs[h] for h in present) / len(present)
    return probs


def _flat(tree: Mapping) -> dict[str, Any]:
    return traverse_util.flatten_dict(flax.core.unfreeze(tree), sep="/")


def _copy_checked(dst: Mapping, src: Mapping, what: str) -> dict:
    """`src` as arrays in `dst`'s dtypes, after checking both trees have the same leaves/shapes."""
    fd, fs = _flat(dst), _flat(src)
    missing = sorted(set(fd) - set(fs))
    extra = sorted(set(fs) - set(fd))
    shapes = [f"{k}: {tuple(fs[k].shape)} vs {tuple(fd[k].shape)}"
              for k in sorted(set(fd) & set(fs)) if tuple(fs[k].shape) != tuple(fd[k].shape)]
    if missing or extra or shapes:
        raise ValueError(f"{what}: trunk weights do not fit; missing {missing[:8]}, "
                         f"unexpected {extra[:8]}, wrong shape {shapes[:8]}")
    # jnp.array copies: the two streams must not share buffers (jit donation would reject that).
    return jax.tree.map(lambda d, s: jnp.array(s, dtype=d.dtype, copy=True),
                        flax.core.unfreeze(dst), flax.core.unfreeze(src))


def load_pretrained_trunks(variables: Mapping, model_cfg: Any,
                           weights: Mapping[str, str]) -> dict:
    """Copy the trunk of ported classifier files (`weights`: arch -> .npz) into trunk_a/trunk_b.

    Both streams of a two-trunk model with the same arch start from identical weights (paper
    2.3), as separate arrays. A missing file raises FileNotFoundError naming the command that
    makes it.
    """
    from cxrjax.models import port

    out = {k: dict(v) for k, v in flax.core.unfreeze(variables).items()}
    for stream in ("trunk_a", "trunk_b"):
        arch = _field(model_cfg, stream)
        if arch is None:
            continue
        if arch not in weights:
            raise ValueError(f"no pretrained weights file given for {stream} ({arch}); "
                             f"given: {sorted(weights)}")
        path = os.fspath(weights[arch])
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"pretrained {arch} weights not found: {path}; make them with: "
                f"python scripts/port_torchvision.py --arch {arch} --out {path}")
        recorded = port.variables_arch(path)
        if recorded is not None and recorded != arch:
            raise ValueError(f"{path} holds {recorded} weights, but model.{stream} is {arch}")
        src = port.load_variables(path)
        for col in ("params", "batch_stats"):
            if stream not in out.get(col, {}):
                continue
            if "trunk" not in src.get(col, {}):
                raise ValueError(f"{path}: no {col}/trunk in this file (not a ported classifier?)")
            out[col][stream] = _copy_checked(out[col][stream], src[col]["trunk"],
                                             f"{path} -> {col}/{stream}")
    return out
