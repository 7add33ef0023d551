"""The evaluation sections a run's test results carry beyond the AUC table, in report order.

Adding a section: a module that defines ``SECTION`` (``cxrjax.evaluation.section.Section``), its
fields in the recipe's ``eval`` block, and one entry here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import ml_collections as mlc

from cxrjax.evaluation import calibration, metadata_baseline, operating_points, subgroups
from cxrjax.evaluation import localization as localizer
from cxrjax.evaluation.section import Section, SectionInputs

REGISTRY: tuple[Section, ...] = (operating_points.SECTION, calibration.SECTION,
                                 localizer.SECTION, subgroups.SECTION, metadata_baseline.SECTION)


def check(config: mlc.ConfigDict) -> None:
    """Each section's checks of its ``eval.*`` fields (ConfigError naming the first bad one)."""
    for section in REGISTRY:
        section.check(config.eval, config.model)


def compute(inputs: SectionInputs) -> dict[str, dict]:
    """Every section's result, in order; a section turned off says so instead."""
    results: dict[str, dict] = {}
    for section in REGISTRY:
        if section.switch and not inputs.config.eval[section.switch]:
            results[section.name] = {"skipped": f"turned off (eval.{section.switch} = False)"}
        else:
            results[section.name] = section.compute(
                dataclasses.replace(inputs, earlier=dict(results)))
    return results


def summaries(results: Mapping[str, Mapping]) -> dict[str, Mapping]:
    """What ``test_metrics.json`` keeps of each section's result."""
    return {s.name: s.summary(results[s.name]) for s in REGISTRY if s.name in results}


def report(results: Mapping[str, Mapping]) -> list[str]:
    """The report's sections, in order (those of a run reported without them are left out)."""
    return [s.report(results[s.name]) for s in REGISTRY if s.name in results]
