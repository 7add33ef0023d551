"""Reading a run folder back: its recorded config (over the recipe's defaults), each stage's
checkpoints, and a trained model with its variables. Where the files lie: ``cxrjax.io.run_layout``.
"""

from __future__ import annotations

import json
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections as mlc
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from cxrjax import config_checks, models
from cxrjax.io import checkpoint, fileio, run_layout, storage_checks


def stage_dir(workdir: str, index: int, stage: Any) -> str:
    return run_layout.stage_dir(workdir, index, stage.name)


def record_config(workdir: str, config: mlc.ConfigDict) -> None:
    """Creates the workdir (one clear error if impossible) and writes WORKDIR/config.json, the
    config ``load_config`` reads back (on process 0)."""
    try:
        fileio.makedirs(run_layout.path(workdir, run_layout.EVAL))
        if jax.process_index() == 0:
            fileio.write_text(run_layout.path(workdir, run_layout.CONFIG),
                              config.to_json_best_effort(indent=2))
    except OSError as e:
        raise OSError(f"workdir {workdir} is not usable: {e.strerror or e}") from None


def load_config(workdir: str) -> mlc.ConfigDict:
    """The config a run was trained with (WORKDIR/config.json)."""
    path = run_layout.path(workdir, run_layout.CONFIG)
    if not fileio.exists(path):
        raise FileNotFoundError(f"{workdir} is not a cxrjax workdir (no config.json in it)")
    try:
        saved = json.loads(fileio.read_text(path))
        if not isinstance(saved, dict) or not (saved.get("train") or {}).get("stages"):
            raise ValueError("no train.stages in it")
    except ValueError as e:
        raise ValueError(f"{path} is not a readable config: {e}") from None
    return with_recipe_defaults(saved)


def with_recipe_defaults(saved: dict) -> mlc.ConfigDict:
    """A recorded config (JSON dict) laid over the recipe's base config, so a run recorded
    before a field existed (``data.synthetic_seed`` ...) loads with that field's default.
    Stages stay attribute-accessible ConfigDicts, each over ``recipe.stage``'s defaults."""
    from cxrjax import recipe

    def overlay(base: dict, over: dict) -> dict:
        for key, value in over.items():
            both = isinstance(value, dict) and isinstance(base.get(key), dict)
            base[key] = overlay(base[key], value) if both else value
        return base

    merged = overlay(recipe.base_config().to_dict(), {**saved, "train": {
        k: v for k, v in saved["train"].items() if k != "stages"}})
    defaults = recipe.stage("", 0).to_dict()
    merged["train"]["stages"] = [mlc.ConfigDict({**defaults, **s}) for s in
                                 saved["train"]["stages"]]
    return mlc.ConfigDict(merged)


def final_stage_dir(workdir: str) -> str:
    """Checkpoint directory of a run's last stage."""
    stages = load_config(workdir).train.stages
    return stage_dir(workdir, len(stages) - 1, stages[-1])


def best_step(directory: str) -> int:
    """The step with the best validation mean AUC (the latest if none was validated)."""
    steps = []
    if fileio.isdir(directory):
        manager = checkpoint.open_manager(directory, keep=1_000_000, read_only=True)
        steps = manager.all_steps()
    if not steps:
        raise FileNotFoundError(f"training has not finished a checkpoint yet (none in "
                                f"{directory})")
    return manager.best_step() or max(steps)


def init_model(config: mlc.ConfigDict, dtype: Any) -> tuple[Any, dict]:
    """The configured model and randomly initialised variables."""
    model = models.build_model(config.model, dtype=dtype)
    return model, random_variables(model, config)


def random_variables(model: Any, config: mlc.ConfigDict) -> dict:
    """``model``'s randomly initialised variables (seed ``config.seed``), compiled."""
    # rbg keys: the same quality for initialisation, and init compiles ~5x faster on CPU.
    variables = jax.jit(lambda r: model.init(r, _dummy_images(config), train=False))(
        jax.random.key(config.seed, impl="rbg"))
    return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


def abstract_variables(model: Any, config: mlc.ConfigDict) -> dict:
    """Shapes and dtypes of the model's variables, without compiling an init."""
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0, impl="rbg"),
                                               _dummy_images(config), train=False))
    return {"params": shapes["params"], "batch_stats": shapes.get("batch_stats", {})}


def _dummy_images(config: mlc.ConfigDict) -> jax.Array:
    crop = config.data.crop
    return jnp.zeros((1, crop, crop, 1), jnp.uint8)


def restore_variables(directory: str, template: dict, step: int | None = None, *,
                      mesh: Mesh) -> dict:
    """Params and batch statistics of a saved step (default: the best), replicated on ``mesh``.

    Works whatever device topology saved it (8 GPUs -> 1 CPU): the target carries the
    shardings, and only these two collections are read (not the optimizer state). A tree that
    does not fit ``template`` (another model's checkpoint) is a CheckpointError, and so are
    arrays that differ from the checksums saved with them.
    """
    ocp = checkpoint.ocp
    step = best_step(directory) if step is None else step
    path = fileio.join(directory, str(step), "state")
    empty = {k: {} for k, v in template.items() if not jax.tree.leaves(v)}  # e.g. no BatchNorm
    template = {k: v for k, v in template.items() if k not in empty}
    unreadable = f"checkpoint {step} in {directory} is unreadable (truncated or corrupt?)"
    try:
        saved = ocp.StandardCheckpointer().metadata(path).item_metadata
    except Exception as e:  # noqa: BLE001 - orbax/tensorstore raise many kinds: one line each
        raise checkpoint.CheckpointError(f"{unreadable}: {type(e).__name__}") from None
    missing = [k for k in template if saved is None or k not in saved]
    if missing:
        raise checkpoint.CheckpointError(f"{unreadable}: no {', '.join(missing)} in its "
                                         "parameter metadata")
    saved = {k: saved[k] for k in template}
    shape = lambda leaf: tuple(leaf.shape)  # noqa: E731
    if (jax.tree.structure(saved) != jax.tree.structure(template)
            or jax.tree.leaves(jax.tree.map(shape, saved)) !=
            jax.tree.leaves(jax.tree.map(shape, template))):
        raise checkpoint.CheckpointError(f"checkpoint {step} in {directory} does not match this "
                                         "model's parameter tree (another config's run?)")
    repl = NamedSharding(mesh, P())
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=repl),
                          template)
    manager = checkpoint.open_manager(directory, keep=1_000_000, read_only=True)
    args = ocp.args.PyTreeRestore(item=target, partial_restore=True,
                                  restore_args=ocp.checkpoint_utils.construct_restore_args(target))
    items = {"state": args}
    if fileio.exists(fileio.join(directory, str(step), "meta")):  # the record, checksums in it
        items["meta"] = ocp.args.JsonRestore()
    try:
        out = manager.restore(step, args=ocp.args.Composite(**items))
        restored = out["state"]
        checkpoint.verify_checksums(out.get("meta") or {}, restored, f"checkpoint {step}")
    except Exception as e:  # noqa: BLE001
        first = (str(e).splitlines() or [""])[0][:300]
        raise checkpoint.CheckpointError(f"{unreadable}: {type(e).__name__} {first}") from None
    return {**empty, **restored}


def load_run(workdir: str, mesh: Mesh) -> tuple[mlc.ConfigDict, Any, dict, int]:
    """(config, model, variables, step): a trained run's best checkpoint of its last stage,
    replicated on ``mesh``.

    The model is built in the run's compute dtype. A missing/broken workdir, an unfinished run
    or a checkpoint of another model is a one-line error.
    """
    workdir = fileio.expand(workdir)
    storage_checks.check_bucket(workdir)  # a wrong bucket, an unreachable server: one line
    if not fileio.isdir(workdir):
        if fileio.exists(workdir):
            raise NotADirectoryError(f"{workdir} is a file, not a run folder (give the folder "
                                     "that cxrjax.main wrote)")
        raise FileNotFoundError(f"workdir not found: {workdir}")
    config = load_config(workdir)
    config_checks.check_config(config)
    directory = final_stage_dir(workdir)
    step = best_step(directory)
    model = models.build_model(config.model, dtype=models.compute_dtype(config.dtype))
    template = abstract_variables(model, config)
    return config, model, restore_variables(directory, template, step, mesh=mesh), step
