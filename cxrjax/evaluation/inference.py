"""Jitted inference: the one mesh, the one scoring function, and a split scored image by image.

Every device of every process is one ``data`` axis; variables are replicated and batches are
sharded along it. A split is scored in padded + masked batches and gathered on every host, so
each image is scored exactly once whatever the device and process count.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from cxrjax import models
from cxrjax.data.labels import CLASSES

DATA_AXIS = "data"


def create_mesh() -> Mesh:
    """One data-parallel axis over every device of every process."""
    return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """The same full copy on every device (variables, train state)."""
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """Rows split over the ``data`` axis (batches)."""
    return NamedSharding(mesh, P(DATA_AXIS))


def make_predict_fn(model: Any, fusion: tuple[str, ...], mesh: Mesh) -> Callable:
    """Jitted (variables, uint8 images (B, H, W, 1)) -> {head: (B, 14) probabilities, "fused":
    their mean over ``fusion``}; variables replicated, images and outputs batch-sharded."""

    def predict(variables, images):
        logits = model.apply(variables, images, train=False)
        return models.probabilities(logits, fusion)

    return jax.jit(predict, in_shardings=(replicated(mesh), batch_sharded(mesh)),
                   out_shardings=batch_sharded(mesh))


def predict_split(predict_fn: Callable, variables: dict, ds: Any, split: str, mesh: Mesh,
                  ) -> tuple[list[str], dict[str, np.ndarray], np.ndarray]:
    """(image ids, {head: (N, 14) probabilities}, labels (N, 14)) for one split of ``ds``
    (a ``pipeline.Datasets``), on every process."""
    data = batch_sharded(mesh)
    n = ds.num_examples(split)
    probs: dict[str, np.ndarray] = {}
    labels = np.zeros((n, len(CLASSES)), np.uint8)
    seen = np.zeros(n, np.int64)
    for host_batch in ds.eval_batches(split):
        images = jax.make_array_from_process_local_data(data, np.asarray(host_batch["image"]))
        out = predict_fn(variables, images)
        gathered = gather({**out, "labels": host_batch["labels"], "mask": host_batch["mask"],
                           "index": host_batch["index"]}, data)
        keep = gathered["mask"].astype(bool)
        index = gathered["index"][keep]
        np.add.at(seen, index, 1)
        labels[index] = gathered["labels"][keep]
        for head in out:
            probs.setdefault(head, np.zeros((n, len(CLASSES)), np.float32))
            probs[head][index] = gathered[head][keep]
    if not np.all(seen == 1):
        raise RuntimeError(f"evaluation of {split!r} scored {int((seen == 0).sum())} images "
                           f"never and {int((seen > 1).sum())} more than once")
    return list(ds.image_ids(split)), probs, labels


def predict_split_masked(predict_fn: Callable, variables: dict, ds: Any, split: str,
                         mesh: Mesh) -> tuple[list[str], dict[str, np.ndarray], np.ndarray,
                                              np.ndarray]:
    """``predict_split`` for data with missing labels: also each image's label mask (all ones
    for a source without missing labels). Each image is scored once."""
    data = batch_sharded(mesh)
    n = ds.num_examples(split)
    probs: dict[str, np.ndarray] = {}
    labels = mask = None
    seen = np.zeros(n, np.int64)
    for host_batch in ds.eval_batches(split):
        images = jax.make_array_from_process_local_data(data, np.asarray(host_batch["image"]))
        out = predict_fn(variables, images)
        label_mask = host_batch.get("label_mask", np.ones_like(host_batch["labels"]))
        got = gather({**out, "labels": host_batch["labels"], "label_mask": label_mask,
                                "mask": host_batch["mask"], "index": host_batch["index"]}, data)
        keep = got["mask"].astype(bool)
        index = got["index"][keep]
        if labels is None:
            labels = np.zeros((n, got["labels"].shape[1]), np.uint8)
            mask = np.zeros_like(labels)
        np.add.at(seen, index, 1)
        labels[index], mask[index] = got["labels"][keep], got["label_mask"][keep]
        for head in out:
            probs.setdefault(head, np.zeros((n, got[head].shape[1]), np.float32))
            probs[head][index] = got[head][keep]
    if not np.all(seen == 1):
        raise RuntimeError(f"evaluation of {split!r} scored {int((seen == 0).sum())} images "
                           f"never and {int((seen > 1).sum())} more than once")
    return list(ds.image_ids(split)), probs, labels, mask


def gather(tree: dict, sharding: NamedSharding) -> dict:
    """Every process's rows of a batch-sharded tree (global arrays or this host's NumPy rows),
    as NumPy on every process."""
    if jax.process_count() == 1:
        return {k: np.asarray(v) for k, v in tree.items()}
    from jax.experimental import multihost_utils

    global_tree = {k: v if isinstance(v, jax.Array) else
                   jax.make_array_from_process_local_data(sharding, np.asarray(v))
                   for k, v in tree.items()}
    return {k: np.asarray(v) for k, v in
            multihost_utils.process_allgather(global_tree, tiled=True).items()}
