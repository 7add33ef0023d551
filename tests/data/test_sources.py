"""Release sources in the pipeline: labels with a mask for the model's classes, the release's
splits and their hashes, synthetic sets made in the workdir, and the data config checks."""

import ml_collections as mlc
import numpy as np
import pytest

from cxrjax import recipe
from cxrjax.config_checks import ConfigError, check_config
from cxrjax.data import label_space, pipeline, release_splits, sources


def _cfg(source: str, **kw) -> mlc.ConfigDict:
    c = recipe.base_config().data
    c.update({"source": source, "synthetic_n": 240, "synthetic_size": 40, "synthetic_seed": 3,
              "resolution": 40, "crop": 32, "workers": 0, "prepare_workers": 0, **kw})
    return c


@pytest.fixture(scope="module")
def chexpert_run(tmp_path_factory):
    """synthetic_chexpert made and prepared in a workdir, read under ``ignore``."""
    workdir = tmp_path_factory.mktemp("run")
    cfg = _cfg("synthetic_chexpert")
    prepared = pipeline.ensure_prepared(cfg, str(workdir))
    return workdir, cfg, prepared


def _datasets(cfg, prepared):
    return pipeline.create_datasets(cfg, prepared, global_batch_size=8, eval_batch_size=16,
                                    seed=0, process_index=0, process_count=1)


def test_release_batches_carry_labels_and_a_mask_of_the_known_ones(chexpert_run):
    _, cfg, prepared = chexpert_run
    ds = _datasets(cfg, prepared)
    batch = next(ds.train_iter())
    assert batch["labels"].shape == batch["label_mask"].shape == (8, 14)
    assert batch["label_mask"].dtype == np.uint8
    lacks = [label_space.CLASS_INDEX[c] for c in ("Infiltration", "Mass", "Nodule", "Hernia")]
    assert not batch["label_mask"][:, lacks].any()  # CheXpert does not label these
    # Every record as the policy reads it, against the stored states.
    source = ds.records._source
    states = np.stack([source[i]["label_states"][:14] for i in range(len(source))])
    assert (states == label_space.UNCERTAIN).any()  # the synthetic set writes some -1.0
    for i in range(len(source)):
        _, labels, mask = ds.records[i]
        np.testing.assert_array_equal(mask, (states[i] >= 0).astype(np.uint8))
        np.testing.assert_array_equal(labels, (states[i] == 1).astype(np.uint8))


def test_eval_batches_of_a_release_carry_the_mask_with_padding_rows_masked(chexpert_run):
    _, cfg, prepared = chexpert_run
    ds = _datasets(cfg, prepared)
    n = ds.num_examples("test")
    assert n % 16  # a padded last batch
    seen = 0
    for batch in ds.eval_batches("test"):
        assert batch["label_mask"].shape == (16, 14)
        assert not batch["label_mask"][~batch["mask"]].any()
        seen += int(batch["mask"].sum())
    assert seen == n


def test_zeros_policy_counts_uncertain_as_known_negatives(chexpert_run):
    _, cfg, prepared = chexpert_run
    ignore = _datasets(cfg, prepared).records
    zeros = _datasets(_cfg("synthetic_chexpert", uncertain="zeros"), prepared).records
    more = sum(int(zeros[i][2].sum() - ignore[i][2].sum()) for i in range(len(ignore)))
    assert more > 0
    for i in range(len(ignore)):
        np.testing.assert_array_equal(zeros[i][1], ignore[i][1])


def test_splits_are_the_releases_and_their_hashes_are_order_free(chexpert_run):
    _, cfg, prepared = chexpert_run
    ds = _datasets(cfg, prepared)
    hashes = ds.split_hashes()
    assert set(hashes) == {"train", "val", "test"}
    for split, h in hashes.items():
        assert h == release_splits.split_hash(ds.image_ids(split)[::-1])
    assert len(set(hashes.values())) == 3
    other = _datasets(_cfg("synthetic_chexpert", split_seed=1), prepared).split_hashes()
    assert other["test"] == hashes["test"]  # CheXpert's valid.csv, whatever the seed
    assert other["train"] != hashes["train"]


def test_nih_batches_have_no_label_mask(prepared_sample, nih_sample_dir):
    cfg = _cfg("nih", data_dir=str(prepared_sample), manual_dir=str(nih_sample_dir),
               resolution=256, crop=224)
    ds = pipeline.create_datasets(
        cfg, pipeline.PreparedData(data_dir=str(prepared_sample), manual_dir=str(nih_sample_dir)),
        global_batch_size=8, eval_batch_size=8, seed=0, process_index=0, process_count=1)
    assert set(next(ds.train_iter())) == {"image", "labels"}
    assert "label_mask" not in next(iter(ds.eval_batches("test")))


def test_a_prepared_release_that_is_absent_names_the_prepare_command(tmp_path):
    cfg = _cfg("padchest", data_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="--dataset padchest"):
        pipeline.ensure_prepared(cfg, str(tmp_path))


def test_release_of_names_the_release_a_source_reads():
    assert sources.release_of("synthetic_mimic_cxr") == "mimic_cxr"
    assert sources.release_of("padchest") == "padchest"
    assert sources.release_of("synthetic") is None and sources.release_of("nih") is None


@pytest.mark.parametrize("field, value, message", [
    ("source", "chexpert_small", "data.source='chexpert_small'"),
    ("uncertain", "maybe", "data.uncertain='maybe'"),
    ("labeler", "radgraph", "data.labeler='radgraph'"),
    ("views", (), "data.views"),
    ("classes", ("Effusion", "Nothing"), "data.classes"),
    ("classes", label_space.CLASSES[:13], "data.classes has 13 classes"),
    ("classes", ("Effusion", "Effusion"), "expected distinct names"),
    ("classes", label_space.CLASSES[1:15], "label the NIH 14 in the paper's order only"),
    ("synthetic_site", "elsewhere", "data.synthetic_site"),
])
def test_data_config_errors_name_the_field(field, value, message):
    config = recipe.row("r18")
    config.data[field] = value
    with pytest.raises(ConfigError, match=message):
        check_config(config)


def test_the_default_data_fields_pass_and_name_the_paper_classes():
    config = recipe.row("r18")
    check_config(config)
    assert tuple(config.data.classes) == label_space.CLASSES[:14]
    config.data.source = "synthetic_padchest"
    check_config(config)
