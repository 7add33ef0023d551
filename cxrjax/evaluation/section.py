"""One evaluation section: a part of a run's test results beyond the AUC table.

A section (operating points, calibration, localization, subgroups, ...) owns, in its own module:
the ``eval.*`` config fields it reads (their defaults stand in the recipe, the one place for
defaults), their checks, its computation, its files in ``W/eval/`` and its part of
``report.md``. The evaluator and the report loop over the sections the config turns on
(``cxrjax.evaluation.sections.REGISTRY``); adding one is a module plus one entry in that registry.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import ml_collections as mlc

log = logging.getLogger("cxrjax")


def run_classes(config: Any) -> tuple[str, ...]:
    """A run's classes, in its model's output order: its config's ``data.classes`` (NIH's 14,
    the paper's order, when a config has none)."""
    from cxrjax.data.labels import CLASSES

    data = config.get("data") if hasattr(config, "get") else None
    classes = data.get("classes") if data is not None and hasattr(data, "get") else None
    return tuple(classes) if classes else tuple(CLASSES)


def nih_classes(config: Any) -> bool:
    """Whether a run scores NIH's 14 classes in the paper's order (what the paper's rows, NIH's
    boxes and W-AUC/D-AUC/N-AUC assume)."""
    from cxrjax.data.labels import CLASSES

    return run_classes(config) == tuple(CLASSES)


def figure_link(result: Mapping | None, link: str) -> str | None:
    """The picture a section's report shows: ``link``, or None where the section drew none (its
    result's "figure" is None: ``eval.figures`` off). A result from before that key: ``link``."""
    return (result or {}).get("figure", link)


@dataclasses.dataclass(frozen=True)
class SectionInputs:
    """What a section may read: the run's config, both splits' scores, and the model.

    ``test`` and ``val`` are ``evaluator.SplitScores`` (``val`` is None when the validation
    split is empty); ``evaluator`` and ``variables`` serve sections that need the model again
    (localization runs heatmaps). ``eval_dir`` is ``W/eval``: a section writes its files there,
    on process 0 only (``write_files``). ``earlier``: the results of the sections before it in the
    registry's order (subgroups read the operating points' thresholds)."""

    config: mlc.ConfigDict
    eval_dir: str
    test: Any
    val: Any | None
    evaluator: Any = None
    variables: dict | None = None
    workdir: str = ""
    write_files: bool = True
    earlier: Mapping[str, dict] = dataclasses.field(default_factory=dict)  # sections before it

    @property
    def draws_figures(self) -> bool:
        """Whether this process draws the section's picture: it writes files and the config's
        ``eval.figures`` is on."""
        return self.write_files and bool(self.config.eval.figures)


@dataclasses.dataclass(frozen=True)
class Section:
    """One section behind the small interface the evaluator and the report loop over.

    name: its key in ``test_metrics.json`` and in the report's order.
    fields: the ``eval.*`` fields it reads (declared, with defaults, in ``recipe``).
    check: ``check(eval_config, model_config)`` raises ``config_checks.ConfigError``.
    switch: the ``eval.*`` field that turns it on and off, if any (a section that is off is not
      computed: its result says so).
    compute: ``compute(SectionInputs) -> dict`` runs on every process (a section that scores the
      model again must); JSON-ready numbers, or ``{"skipped": why}``; writes its files.
    summary: the short form ``test_metrics.json`` keeps (all of it by default).
    report: ``report(result) -> str``: its markdown section, saying why when skipped.
    """

    name: str
    fields: tuple[str, ...]
    check: Callable[[mlc.ConfigDict, mlc.ConfigDict], None]
    compute: Callable[[SectionInputs], dict]
    report: Callable[[Mapping], str]
    switch: str | None = None
    summary: Callable[[Mapping], Mapping] = lambda result: result


# A split's caveats (a class with one label value) are the same every epoch: log them once.
_LOGGED: set[str] = set()


@contextlib.contextmanager
def caveats_logged_once(prefix: str) -> Iterator[None]:
    """Turns the warnings raised inside into log lines, each logged the first time only."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for message in dict.fromkeys(str(w.message) for w in caught):
        if message not in _LOGGED:
            _LOGGED.add(message)
            log.warning("%s%s", prefix, message)
