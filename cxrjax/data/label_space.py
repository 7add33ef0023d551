"""One label space for every release: canonical class names, label states, uncertainty policies.

Each release names its findings its own way (CheXpert "Pleural Effusion", PadChest
"pleural effusion", NIH "Effusion"); ``TERMS`` maps each release's terms onto the canonical
names in ``CLASSES``, so a model trained on one release can be scored on another over the
classes they share. A label is stored as a *state* (int8): ``POSITIVE``, ``NEGATIVE``,
``UNCERTAIN`` (CheXpert's ``-1.0``, kept in the records) or ``MISSING`` (the release does
not have the class). ``resolve`` applies an uncertainty policy at load time, so changing the
policy never re-prepares; after it, every label is positive, negative or missing. The README's
"Label space" section explains every choice below.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from cxrjax.data import labels as nih_labels

POSITIVE, NEGATIVE, UNCERTAIN, MISSING = 1, 0, -1, -2
STATE_DTYPE = np.int8

# The NIH 14 first, in the paper's order, so an NIH model's classes are a prefix of the space;
# then the findings only the CheXpert-labelled releases (CheXpert, MIMIC-CXR) name.
CLASSES: tuple[str, ...] = (*nih_labels.CLASSES, "Enlarged Cardiomediastinum", "Lung Opacity",
                            "Lung Lesion", "Pleural Other", "Fracture", "Support Devices",
                            "No Finding")
CLASS_INDEX = {name: i for i, name in enumerate(CLASSES)}

# The 14 label columns of CheXpert's train/valid.csv and of both MIMIC-CXR-JPG labelers.
CHEXPERT_COLUMNS: Mapping[str, str] = {
    "No Finding": "No Finding", "Enlarged Cardiomediastinum": "Enlarged Cardiomediastinum",
    "Cardiomegaly": "Cardiomegaly", "Lung Opacity": "Lung Opacity", "Lung Lesion": "Lung Lesion",
    "Edema": "Edema", "Consolidation": "Consolidation", "Pneumonia": "Pneumonia",
    "Atelectasis": "Atelectasis", "Pneumothorax": "Pneumothorax", "Pleural Effusion": "Effusion",
    "Pleural Other": "Pleural Other", "Fracture": "Fracture", "Support Devices": "Support Devices",
}

# PadChest's lower-case terms, matched exactly (not as substrings), grouped by canonical class.
PADCHEST_TERMS: Mapping[str, tuple[str, ...]] = {
    "Atelectasis": ("atelectasis", "laminar atelectasis", "lobar atelectasis",
                    "segmental atelectasis", "round atelectasis", "total atelectasis"),
    "Cardiomegaly": ("cardiomegaly",),
    "Effusion": ("pleural effusion", "loculated pleural effusion",
                 "loculated fissural effusion"),
    "Infiltration": ("infiltrates", "interstitial pattern", "ground glass pattern",
                     "reticular interstitial pattern", "reticulonodular interstitial pattern",
                     "alveolar pattern"),
    "Mass": ("mass", "pulmonary mass"),
    "Nodule": ("nodule", "multiple nodules"),
    "Pneumonia": ("pneumonia", "atypical pneumonia"),
    "Pneumothorax": ("pneumothorax",),
    "Consolidation": ("consolidation", "air bronchogram"),
    "Edema": ("pulmonary edema",),
    "Emphysema": ("emphysema",),
    "Fibrosis": ("pulmonary fibrosis",),
    "Pleural_Thickening": ("pleural thickening", "apical pleural thickening",
                           "calcified pleural thickening"),
    "Hernia": ("hiatal hernia",),
    "Fracture": ("fracture", "rib fracture", "callus rib fracture", "clavicle fracture",
                 "humeral fracture", "vertebral fracture"),
    "Support Devices": ("pacemaker", "dual chamber device", "single chamber device",
                        "electrical device", "endotracheal tube", "nsg tube",
                        "central venous catheter", "chest drain tube", "tracheostomy tube"),
    "No Finding": ("normal",),
}
PADCHEST_TERM_CLASS: Mapping[str, str] = {term: cls for cls, terms in PADCHEST_TERMS.items()
                                          for term in terms}

# Which canonical classes each release labels; every other class is MISSING in its records.
RELEASE_CLASSES: Mapping[str, tuple[str, ...]] = {
    "nih": (*nih_labels.CLASSES, "No Finding"),
    "chexpert": tuple(CHEXPERT_COLUMNS.values()),
    "mimic_cxr": tuple(CHEXPERT_COLUMNS.values()),
    "padchest": tuple(PADCHEST_TERMS),
}

POLICIES = ("ignore", "zeros", "ones")
_CELL_STATES = {"1.0": POSITIVE, "1": POSITIVE, "0.0": NEGATIVE, "0": NEGATIVE,
                "-1.0": UNCERTAIN, "-1": UNCERTAIN, "": NEGATIVE}


class LabelSpaceError(ValueError):
    """A label cell, term, class name or policy outside the label space."""


def empty_states() -> np.ndarray:
    """A (len(CLASSES),) state vector with every class MISSING."""
    return np.full(len(CLASSES), MISSING, STATE_DTYPE)


def chexpert_states(cells: Mapping[str, str]) -> np.ndarray:
    """States from CheXpert-style cells (column -> ``1.0``/``0.0``/``-1.0``/empty).

    Empty means "not mentioned in the report", which the CheXpert paper reads as negative.
    """
    states = empty_states()
    for column, cls in CHEXPERT_COLUMNS.items():
        cell = cells[column].strip()
        if cell not in _CELL_STATES:
            raise LabelSpaceError(f"{column}: cell {cell!r} is not 1.0, 0.0, -1.0 or empty")
        states[CLASS_INDEX[cls]] = _CELL_STATES[cell]
    return states


def padchest_states(terms: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """States from a PadChest ``Labels`` list, and the terms that map to no class.

    A class PadChest labels is positive if one of its terms is listed and negative otherwise.
    """
    states = empty_states()
    for cls in RELEASE_CLASSES["padchest"]:
        states[CLASS_INDEX[cls]] = NEGATIVE
    unmapped = []
    for term in terms:
        term = term.strip().lower()
        if term in PADCHEST_TERM_CLASS:
            states[CLASS_INDEX[PADCHEST_TERM_CLASS[term]]] = POSITIVE
        elif term:
            unmapped.append(term)
    if states[CLASS_INDEX["No Finding"]] == POSITIVE and (
            (states == POSITIVE).sum() > 1):  # "normal" beside a finding: not normal
        states[CLASS_INDEX["No Finding"]] = NEGATIVE
    return states, unmapped


def nih_states(multi_hot: np.ndarray) -> np.ndarray:
    """States from NIH's 14-class multi-hot: the 14 as given, No Finding when none is set."""
    states = empty_states()
    states[:nih_labels.NUM_CLASSES] = np.where(np.asarray(multi_hot) > 0, POSITIVE, NEGATIVE)
    states[CLASS_INDEX["No Finding"]] = NEGATIVE if np.any(multi_hot) else POSITIVE
    return states


def check_policy(policy: str) -> str:
    """``policy`` if it is one of ``POLICIES``; a one-line error otherwise."""
    if policy not in POLICIES:
        raise LabelSpaceError(f"unknown uncertainty policy {policy!r}; expected one of "
                              f"{', '.join(POLICIES)}")
    return policy


def resolve(states: np.ndarray, policy: str) -> np.ndarray:
    """States with UNCERTAIN replaced by the policy: ``ignore`` -> MISSING, ``zeros`` ->
    NEGATIVE, ``ones`` -> POSITIVE (Irvin et al. 2019's U-Ignore, U-Zeros, U-Ones)."""
    to = {"ignore": MISSING, "zeros": NEGATIVE, "ones": POSITIVE}[check_policy(policy)]
    states = np.asarray(states, STATE_DTYPE)
    return np.where(states == UNCERTAIN, to, states).astype(STATE_DTYPE)


def class_indices(classes: Sequence[str]) -> np.ndarray:
    """Positions in ``CLASSES`` of a model's classes (its config's names, in its order)."""
    unknown = [c for c in classes if c not in CLASS_INDEX]
    if unknown:
        raise LabelSpaceError(f"unknown class(es) {unknown}; the label space has "
                              f"{', '.join(CLASSES)}")
    return np.array([CLASS_INDEX[c] for c in classes], np.int64)


def labels_and_mask(states: np.ndarray, classes: Sequence[str], policy: str = "ignore"
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(labels, mask), both uint8 (..., len(classes)): a model's targets and which count.

    ``mask`` is 0 where the label is missing (after ``policy``); ``labels`` is 1 for positive.
    """
    picked = resolve(np.asarray(states)[..., class_indices(classes)], policy)
    return (picked == POSITIVE).astype(np.uint8), (picked != MISSING).astype(np.uint8)
