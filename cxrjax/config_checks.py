"""Config checks: one clear line per bad field, before anything is built.

The `model.*` fields and `dtype` are the model family's to check (`models.check_model_config`,
`models.compute_dtype`); this module adds the data and training fields and how they fit the model.
"""

from __future__ import annotations

import difflib
import os
import re

import jax
import ml_collections as mlc

from cxrjax import models, recipe


class ConfigError(ValueError):
    """A config field with a bad value; the message names the field."""


def check_config(config: mlc.ConfigDict) -> None:
    """Raises ConfigError naming the first bad field."""
    m, d, t = config.model, config.data, config.train
    try:
        models.check_model_config(m)
        models.compute_dtype(config.dtype)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    check_row(config.get("row"))
    heads = models.output_heads(m)
    check_data(d, m.num_classes)
    if d.crop > d.resolution:
        raise ConfigError(f"data.crop={d.crop} is larger than data.resolution={d.resolution}")
    for arch in {m.trunk_a, m.trunk_b} - {None}:
        if d.crop < models.trunk_stride(arch):
            raise ConfigError(f"data.crop={d.crop} is smaller than the {arch} trunk's stride "
                              f"({models.trunk_stride(arch)}): its feature map would be empty")
    n_dev = jax.device_count()
    for field in ("batch_size", "eval_batch_size"):
        value = t[field]
        if value <= 0 or value % n_dev:
            raise ConfigError(f"train.{field}={value} must be a positive multiple of the "
                              f"device count ({n_dev})")
    if t.lr <= 0:
        raise ConfigError(f"train.lr={t.lr} must be positive")
    if not t.stages:
        raise ConfigError("train.stages is empty")
    for i, stage in enumerate(t.stages):
        where = f"train.stages[{i}]"
        if stage.epochs <= 0:
            raise ConfigError(f"{where}.epochs={stage.epochs} must be positive")
        for head, w in stage.loss_weights.items():
            if head not in heads:
                raise ConfigError(f"{where}.loss_weights has {head!r}, not a head of this model "
                                  f"({', '.join(heads)})")
            if w < 0:
                raise ConfigError(f"{where}.loss_weights.{head}={w} is negative")
        if not any(stage.loss_weights.get(h, 0) > 0 for h in heads):
            raise ConfigError(f"{where}.loss_weights: every weight is zero")
        try:
            re.compile(stage.trainable)
        except re.error as e:
            raise ConfigError(f"{where}.trainable={stage.trainable!r}: bad regex ({e})") from None


def check_data(d: mlc.ConfigDict, num_classes: int) -> None:
    """The data source (or a mix and its weights) and its label fields: classes, views,
    uncertainty policy, labeler."""
    from cxrjax.data import label_space, mimic_layout, mixing, pipeline
    from cxrjax.data import release_rows as rr
    from cxrjax.data.labels import CLASSES as NIH_CLASSES
    from cxrjax.data.sources import RELEASES, SYNTHETIC, release_of

    mix_problem = mixing.check(d.source, tuple(d.get("source_weights") or ()))
    if mix_problem:
        raise ConfigError(mix_problem)
    if not mixing.is_mixed(d.source) and d.source not in pipeline.SOURCES:
        raise ConfigError(f"data.source={d.source!r}: expected one of "
                          f"{', '.join(pipeline.SOURCES)}, or several joined by + (a mix)")
    classes = tuple(d.get("classes") or ())
    unknown = [c for c in classes if c not in label_space.CLASS_INDEX]
    if unknown or not classes or len(set(classes)) != len(classes):
        raise ConfigError(f"data.classes={list(classes)}: expected distinct names of the label "
                          f"space ({', '.join(label_space.CLASSES)})")
    if len(classes) != num_classes:
        raise ConfigError(f"data.classes has {len(classes)} classes but model.num_classes="
                          f"{num_classes}")
    nih_sourced = [s for s in mixing.source_names(d.source) if release_of(s) is None]
    if classes != NIH_CLASSES and nih_sourced:
        raise ConfigError(f"data.classes={list(classes)}: the source(s) {', '.join(nih_sourced)} "
                          "label the NIH 14 in the paper's order only; other class lists need a "
                          f"release source ({', '.join(RELEASES + SYNTHETIC)})")
    if d.uncertain not in label_space.POLICIES:
        raise ConfigError(f"data.uncertain={d.uncertain!r}: expected one of "
                          f"{', '.join(label_space.POLICIES)}")
    if d.labeler not in mimic_layout.LABELERS:
        raise ConfigError(f"data.labeler={d.labeler!r}: expected one of "
                          f"{', '.join(mimic_layout.LABELERS)}")
    try:
        rr.check_views(tuple(d.views))
    except ValueError as e:
        raise ConfigError(f"data.views={list(d.views)}: {e}") from None
    from cxrjax.data.synthetic_formats import SITES

    if d.synthetic_site not in SITES:
        raise ConfigError(f"data.synthetic_site={d.synthetic_site!r}: expected one of "
                          f"{', '.join(SITES)}")


def check_row(row: str | None) -> None:
    """``row``: None (no paper row) or the name of a config row of ``recipe.ROWS``."""
    if row is not None and row not in recipe.row_names():
        raise ConfigError(f"row={row!r}: not a row of the paper's table (cxrjax.recipe.ROWS: "
                          f"{', '.join(recipe.row_names())}); None for a config that is no "
                          "paper row")


# ---------------------------------------------------------------------------------------------
# The command line: a missing config file or a misspelled override is one line with a hint.
# ---------------------------------------------------------------------------------------------


def config_path(argv: list[str]) -> str | None:
    """The ``--config`` file named on a command line, if any."""
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg[len("--config="):]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def flag_problem(argv: list[str], error: Exception) -> str:
    """One line saying what is wrong with the command line, with a suggestion if one fits."""
    first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    path = config_path(argv)
    if path is None:
        return f"{first_line} (python -m cxrjax.main --help)"
    file = path if os.path.isfile(path) else path.split(":")[0]  # config_flags' FILE:ARG
    if not os.path.isfile(file):
        return f"--config {path}: no such file ({os.path.abspath(file)})"
    try:
        import runpy

        config = runpy.run_path(file)["get_config"]()
    except Exception as e:  # noqa: BLE001 - whatever the config file raises
        return f"--config {file}: cannot load it: {type(e).__name__}: {e}"
    for arg in argv:
        if arg.startswith("--config."):
            field = arg[len("--config."):].split("=")[0]
            problem = override_problem(config, field)
            if problem:
                return f"--config.{field}: {problem}"
    return first_line


def override_problem(config, field: str) -> str | None:
    """Why ``--config.<field>`` names no field of ``config`` (None if it does): the first part
    that is missing, and the closest existing field (difflib)."""
    node, walked = config, ""
    for name, index in re.findall(r"([^.\[\]]+)|\[(\d+)\]", field):
        if name:
            if not hasattr(node, "keys") or name not in node:
                where = f"in {walked}" if walked else "at the top of the config"
                guess = difflib.get_close_matches(field, _field_names(config), n=1, cutoff=0.6)
                hint = f"; did you mean --config.{guess[0]}?" if guess else ""
                return f"no field {name!r} {where}{hint}"
            node, walked = node[name], f"{walked}.{name}" if walked else name
        else:
            if not isinstance(node, list | tuple) or int(index) >= len(node):
                size = len(node) if isinstance(node, list | tuple) else 0
                return f"{walked} has {size} entr{'y' if size == 1 else 'ies'}, no [{index}]"
            node, walked = node[int(index)], f"{walked}[{index}]"
    return None


def _field_names(node, prefix: str = "") -> list[str]:
    """Every field's dotted name (``train.stages[0].epochs``), branches included. Not
    flax.traverse_util's ``flatten_dict``: it takes no ConfigDict, keeps every list whole (the
    stages are a list of ConfigDicts) and names no branch."""
    out = [prefix] if prefix else []
    if hasattr(node, "keys"):
        for key in node.keys():
            out += _field_names(node[key], f"{prefix}.{key}" if prefix else key)
    elif isinstance(node, list | tuple):
        for i, item in enumerate(node):
            if hasattr(item, "keys"):
                out += _field_names(item, f"{prefix}[{i}]")
    return out
