"""A run's workdir: where each stage keeps its checkpoints, and how to load a trained model.

Layout: WORKDIR/config.json, WORKDIR/checkpoints/stage<i>_<name>/<step>/, WORKDIR/eval/...
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections as mlc

from cxrjax import checkpoint, models


def stage_dir(workdir: str, index: int, stage: Any) -> str:
    return os.path.join(workdir, "checkpoints", f"stage{index}_{stage.name}")


def restore_variables(directory: str, template: dict, step: int | None = None) -> dict:
    """Params and batch statistics of a saved step (default: best by val AUC, else latest)."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"no checkpoint directory {directory}")
    manager = checkpoint.open_manager(directory, keep=1_000_000, read_only=True)
    if step is None:
        step = manager.best_step() or manager.latest_step()
    if step is None:
        raise FileNotFoundError(f"no finished checkpoint in {directory}")
    restored = manager.restore(step, args=checkpoint.ocp.args.Composite(
        state=checkpoint.ocp.args.StandardRestore()))["state"]
    out = {"params": restored["params"], "batch_stats": restored.get("batch_stats") or {}}
    if jax.tree.structure(out) != jax.tree.structure(template):
        raise checkpoint.CheckpointError(
            f"checkpoint {step} in {directory} does not match this model's parameter tree")
    return jax.tree.map(jnp.asarray, out)


def final_stage_dir(workdir: str) -> str:
    """Checkpoint directory of a run's last stage (or the directory itself if it is one)."""
    root = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(root):
        if os.path.isdir(workdir) and any(n.isdigit() for n in os.listdir(workdir)):
            return workdir
        raise FileNotFoundError(f"{workdir} is not a cxrjax workdir (no checkpoints/ in it)")
    config = load_config(workdir)
    stages = config.train.stages
    return stage_dir(workdir, len(stages) - 1, stages[-1])


def load_config(workdir: str) -> mlc.ConfigDict:
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{workdir} is not a cxrjax workdir (no config.json in it)")
    with open(path) as f:
        config = mlc.ConfigDict(json.load(f))
    # JSON lists stay lists of plain dicts: make the stages attribute-accessible again.
    config.train.stages = [mlc.ConfigDict(s) for s in config.train.stages]
    return config


def init_model(config: mlc.ConfigDict, dtype: Any) -> tuple[Any, dict]:
    """The configured model and randomly initialised variables (the tree to restore into)."""
    model = models.build_model(config.model, dtype=dtype)
    crop = config.data.crop
    dummy = jnp.zeros((1, crop, crop, 1), jnp.uint8)
    # rbg keys: the same quality for initialisation, and init compiles ~5x faster on CPU.
    variables = jax.jit(lambda r: model.init(r, dummy, train=False))(
        jax.random.key(config.seed, impl="rbg"))
    return model, {"params": variables["params"],
                   "batch_stats": variables.get("batch_stats", {})}


def load_run(workdir: str, dtype: Any = jnp.float32) -> tuple[mlc.ConfigDict, Any, dict]:
    """(config, model, best variables of the last stage) of a trained run."""
    workdir = os.path.abspath(os.path.expanduser(workdir))
    config = load_config(workdir)
    model, template = init_model(config, dtype)
    return config, model, restore_variables(final_stage_dir(workdir), template)
