"""The canonical label space: the mapping of each release's terms, states and policies."""

import numpy as np
import pytest

from cxrjax.data import label_space as ls
from cxrjax.data import labels

P, N, U, M = ls.POSITIVE, ls.NEGATIVE, ls.UNCERTAIN, ls.MISSING


def test_nih_classes_are_the_papers_14_in_order_and_a_prefix_of_the_space():
    assert ls.CLASSES[:14] == labels.CLASSES
    assert len(set(ls.CLASSES)) == len(ls.CLASSES)
    np.testing.assert_array_equal(ls.class_indices(labels.CLASSES), np.arange(14))


def test_nih_multi_hot_round_trips_with_a_full_mask():
    y = np.zeros(14, np.uint8)
    y[[2, 4]] = 1
    states = ls.nih_states(y)
    got, mask = ls.labels_and_mask(states, labels.CLASSES)
    np.testing.assert_array_equal(got, y)
    assert mask.tolist() == [1] * 14
    assert states[ls.CLASS_INDEX["No Finding"]] == N
    assert states[ls.CLASS_INDEX["Lung Opacity"]] == M  # NIH does not label it
    assert ls.nih_states(np.zeros(14))[ls.CLASS_INDEX["No Finding"]] == P


def test_chexpert_cells_map_to_canonical_names():
    cells = {c: "" for c in ls.CHEXPERT_COLUMNS}
    cells.update({"Pleural Effusion": "1.0", "Edema": "-1.0", "Atelectasis": "0.0"})
    states = ls.chexpert_states(cells)
    at = ls.CLASS_INDEX
    assert states[at["Effusion"]] == P and states[at["Edema"]] == U
    assert states[at["Atelectasis"]] == N and states[at["Cardiomegaly"]] == N  # empty: negative
    assert states[at["Mass"]] == M and states[at["Infiltration"]] == M  # not a CheXpert class
    with pytest.raises(ls.LabelSpaceError, match=r"Edema: cell '2.0' is not"):
        ls.chexpert_states({**cells, "Edema": "2.0"})


@pytest.mark.parametrize("policy, expected", [
    ("ignore", [P, N, M, M]), ("zeros", [P, N, N, M]), ("ones", [P, N, P, M])])
def test_uncertainty_policies(policy, expected):
    states = np.array([P, N, U, M], np.int8)
    assert ls.resolve(states, policy).tolist() == expected


def test_labels_and_mask_follow_the_policy_and_the_models_class_order():
    states = ls.empty_states()
    states[ls.CLASS_INDEX["Effusion"]] = U
    states[ls.CLASS_INDEX["Edema"]] = P
    classes = ["Edema", "Effusion", "Mass"]
    assert [a.tolist() for a in ls.labels_and_mask(states, classes, "ignore")] == [
        [1, 0, 0], [1, 0, 0]]
    assert [a.tolist() for a in ls.labels_and_mask(states, classes, "ones")] == [
        [1, 1, 0], [1, 1, 0]]
    assert [a.tolist() for a in ls.labels_and_mask(states, classes, "zeros")] == [
        [1, 0, 0], [1, 1, 0]]


def test_padchest_terms_match_exactly_not_as_substrings():
    states, unmapped = ls.padchest_states(["pleural effusion", "subcutaneous emphysema",
                                           "pericardial effusion", " Cardiomegaly "])
    at = ls.CLASS_INDEX
    assert states[at["Effusion"]] == P and states[at["Cardiomegaly"]] == P
    assert states[at["Emphysema"]] == N  # subcutaneous emphysema is not pulmonary emphysema
    assert unmapped == ["subcutaneous emphysema", "pericardial effusion"]
    assert states[at["Lung Opacity"]] == M and states[at["Pleural Other"]] == M
    normal, _ = ls.padchest_states(["normal"])
    assert normal[at["No Finding"]] == P and (normal == P).sum() == 1
    mixed, _ = ls.padchest_states(["normal", "nodule"])
    assert mixed[at["No Finding"]] == N and mixed[at["Nodule"]] == P


def test_every_mapped_term_names_a_class_of_the_space():
    for table in (ls.CHEXPERT_COLUMNS.values(), ls.PADCHEST_TERM_CLASS.values()):
        assert set(table) <= set(ls.CLASSES)
    for release, classes in ls.RELEASE_CLASSES.items():
        assert set(classes) <= set(ls.CLASSES), release


def test_bad_policy_and_unknown_class_are_one_line_errors():
    with pytest.raises(ls.LabelSpaceError, match="unknown uncertainty policy 'maybe'"):
        ls.resolve(ls.empty_states(), "maybe")
    with pytest.raises(ls.LabelSpaceError, match=r"unknown class\(es\) \['Flu'\]"):
        ls.class_indices(["Edema", "Flu"])
