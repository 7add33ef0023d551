"""Class heatmaps of a trained model, jitted over batches of (image, class) pairs.

Every method gives, per pair, a map over the model's input crop at its feature-map resolution
(a raw map: the box rule and the pictures min-max normalise it):

* ``gradcam``: Grad-CAM (Selvaraju et al., 2017) of the reported (fused) probability of the
  class: stream A's last feature map, its channels weighted by the spatial mean of that
  probability's gradient, then ReLU. It reaches through the bilinear FCE head, whose decision
  has no spatial map of its own: the one method every model of the family has.
* ``gradcam_fine``: the same on the output of stream A's last block at twice that map's
  resolution (stride 16 for ResNet and DenseNet: 14x14 at a 224 crop, 6x6 at the demo's 96):
  less class-specific, but finer than a 7x7 (or 3x3) map can be about where a small finding
  lies. Both Grad-CAMs come from one backward pass.
* ``cam_a`` / ``cam_b``: the class activation map (Zhou et al., 2016) of a stream's own
  global-average-pool head (CE on stream A; CE or MSML on stream B): ``sum_k w_kc f_k(h, w)``.
  Its spatial mean plus the bias IS that head's logit, so it is exact for the head, not a
  gradient approximation (the MSML score is linear in the pooled features too). Offered for
  the bilinear models so that the stream that localizes best can be seen beside Grad-CAM.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from cxrjax import models
from cxrjax.evaluation import inference

# method -> (the stream whose output feature map it explains, the GAP head read for a CAM)
STREAMS: dict[str, tuple[str, str | None]] = {
    "gradcam": ("trunk_a", None), "gradcam_fine": ("trunk_a", None),
    "cam_a": ("trunk_a", "head_a"), "cam_b": ("trunk_b", "head_b"),
}
TITLES = {"gradcam": "Grad-CAM (fused, stream A)",
          "gradcam_fine": "Grad-CAM, 2x finer (fused, stream A's inner block)",
          "cam_a": "CAM (stream A head)", "cam_b": "CAM (stream B head)"}


def available_methods(model: Any) -> tuple[str, ...]:
    """The methods ``model`` (a built PaperNet) supports: Grad-CAM, and a CAM per GAP head."""
    out = ["gradcam", "gradcam_fine"]
    if getattr(model, "head_a", None) is not None:
        out.append("cam_a")
    if getattr(model, "head_b", None) is not None:
        out.append("cam_b")
    return tuple(out)


def check_methods(methods: Sequence[str], model: Any) -> tuple[str, ...]:
    """``methods`` as a tuple; a ValueError (one line) for one this model does not have."""
    have = available_methods(model)
    bad = [m for m in methods if m not in have]
    if bad or not methods:
        raise ValueError(f"heatmap method(s) {bad or '(none)'}: this model offers "
                         f"{', '.join(have)}")
    return tuple(dict.fromkeys(methods))


def _forward(model: Any, fusion: tuple[str, ...], variables, images, deltas, seen=None):
    """(fused probabilities, the feature maps Grad-CAM may explain). An interceptor keeps each
    stream's output and stream A's inner blocks' outputs, and adds deltas[path] to a module's
    output: d(fused)/d(delta) is the gradient w.r.t. that feature map, with no hook in the model
    itself. ``seen`` collects (path, shape)."""
    maps = {}

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        path = tuple(context.module.path)
        if context.method_name != "__call__" or getattr(out, "ndim", 0) != 4 or not (
                path in (("trunk_a",), ("trunk_b",)) or path[:1] == ("trunk_a",)
                and len(path) == 2):
            return out
        maps[path] = out
        if seen is not None:
            seen.append((path, out.shape))
        return out + deltas[path].astype(out.dtype) if path in deltas else out

    with nn.intercept_methods(interceptor):
        logits = model.apply(variables, images, train=False)
    return models.probabilities(logits, fusion)["fused"], maps


def _gradcam_targets(model: Any, fusion: tuple[str, ...], methods: Sequence[str], variables,
                     images) -> dict[str, tuple[tuple[str, ...], tuple[int, ...]]]:
    """Grad-CAM method -> (the module whose output it explains, that output's shape)."""
    seen = []
    jax.eval_shape(lambda: _forward(model, fusion, variables, images, {}, seen)[0])
    final = dict(seen)[("trunk_a",)]
    inner = [(p, sh) for p, sh in seen if len(p) == 2]  # stream A's blocks, in call order
    finer = [(p, sh) for p, sh in inner if sh[1] == 2 * final[1]] or [
        (p, sh) for p, sh in inner if sh[1] > final[1]]
    out = {"gradcam": (("trunk_a",), final)}
    out["gradcam_fine"] = finer[-1] if finer else out["gradcam"]
    return {m: t for m, t in out.items() if m in methods}


def make_heatmap_fn(model: Any, fusion: Sequence[str], mesh: Mesh,
                    methods: Sequence[str]) -> Callable:
    """Jitted (variables, uint8 images (B, H, W, 1), classes (B,)) -> {method: (B, h, w)
    float32}; variables replicated, the batch sharded over ``mesh``, the maps replicated.
    B must be a multiple of the mesh size. Both Grad-CAMs share one backward pass."""
    methods = check_methods(methods, model)
    fusion = tuple(fusion)

    def run(variables, images, classes):
        out = {}
        chosen = _gradcam_targets(model, fusion, methods, variables, images)
        if chosen:
            deltas = {path: jnp.zeros(shape, jnp.float32) for path, shape in chosen.values()}
            fused, vjp, maps = jax.vjp(
                lambda d: _forward(model, fusion, variables, images, d), deltas, has_aux=True)
            (grads,) = vjp(jax.nn.one_hot(classes, fused.shape[-1], dtype=fused.dtype))
            for method, (path, _) in chosen.items():
                weights = grads[path].mean(axis=(1, 2))  # (B, K)
                out[method] = jax.nn.relu(jnp.einsum(
                    "bhwk,bk->bhw", maps[path].astype(jnp.float32), weights))
        else:
            maps = _forward(model, fusion, variables, images, {})[1]
        for method in methods:
            stream, head = STREAMS[method]
            if head is not None:
                kernel = variables["params"][head]["fc"]["kernel"].astype(jnp.float32)  # (K, C)
                out[method] = jnp.einsum("bhwk,kb->bhw", maps[(stream,)].astype(jnp.float32),
                                         kernel[:, classes])
        return out

    return jax.jit(run, in_shardings=(inference.replicated(mesh), inference.batch_sharded(mesh),
                                      inference.batch_sharded(mesh)),
                   out_shardings=inference.replicated(mesh))


def global_batch(rows: np.ndarray, mesh: Mesh) -> jax.Array:
    """A batch every process holds whole, as one array sharded over ``mesh`` (multi-host too)."""
    sharding = inference.batch_sharded(mesh)
    return jax.make_array_from_callback(rows.shape, sharding, lambda index: rows[index])


def batch_size_for(requested: int, mesh: Mesh) -> int:
    """``requested`` rounded up to a multiple of the mesh size (each device gets equal rows)."""
    return -(-max(int(requested), 1) // mesh.size) * mesh.size
