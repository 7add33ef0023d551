"""Several sources in one run (``data.source = "nih+chexpert"``): the train stream follows the
weights, every source's train split is drawn whole on each pass, resume is exact, validation and
test are the first source's, and a bad mix is one clear config error."""

import collections
import pickle

import numpy as np
import pytest

from cxrjax import recipe
from cxrjax.config_checks import ConfigError, check_config
from cxrjax.data import label_space, mixing, pipeline

# CheXpert does not label Infiltration: its rows have a 0 there in their mask, NIH's never.
INFILTRATION = label_space.CLASS_INDEX["Infiltration"]


def _cfg(tiny_data, tiny_chexpert, weights=(3, 1), source="nih+chexpert"):
    d = recipe.base_config().data
    d.update({"source": source, "source_weights": weights, "resolution": 40, "crop": 32,
              "workers": 0, "data_dir": str(tiny_data / "tfds"),
              "manual_dir": str(tiny_data / "nih")})
    d.data_dirs.chexpert = str(tiny_chexpert / "tfds")
    return d


def _datasets(d, seed=0):
    prepared = pipeline.ensure_prepared(d, "unused: no synthetic source")
    return pipeline.create_datasets(d, prepared, global_batch_size=8, eval_batch_size=16,
                                    seed=seed, process_index=0, process_count=1)


@pytest.fixture(scope="module")
def mixed(tiny_data, tiny_chexpert):
    return _datasets(_cfg(tiny_data, tiny_chexpert))


def test_batches_draw_the_sources_in_proportion_to_their_weights(mixed):
    it = mixed.train_iter()
    masks = np.concatenate([next(it)["label_mask"] for _ in range(10)])
    from_chexpert = masks[:, INFILTRATION] == 0
    assert masks.shape == (80, 14) and masks.dtype == np.uint8
    assert from_chexpert.sum() == 20  # weights 3:1 -> a quarter of the 80 rows,
    assert (from_chexpert.reshape(20, 4).sum(axis=1) == 1).all()  # one in every 4 in a row
    it.close()


def test_each_source_is_drawn_whole_on_every_pass_and_reshuffled(mixed):
    order, mix = mixed.mix.order(mixed.seed), mixed.mix
    drawn = np.array([order(g) for g in range(4 * 3 * len(mix.rows[1]))])
    per_source = [drawn[mixed.records.part_of(drawn) == i] for i in range(2)]
    for rows, got in zip(mix.rows, per_source, strict=True):
        n = len(rows)
        first, second = got[:n], got[n:2 * n]
        assert sorted(first) == sorted(second) == sorted(rows)  # each pass: every image once
        assert not np.array_equal(first, second)  # in a new order
    counts = collections.Counter(mixed.records.part_of(drawn).tolist())
    assert counts[0] == 3 * counts[1]


def test_get_state_and_set_state_resume_the_mixed_stream_exactly(tiny_data, tiny_chexpert,
                                                                  mixed):
    it = mixed.train_iter()
    for _ in range(3):
        next(it)
    state = it.get_state()
    assert state["sources"] == "nih+chexpert" and state["source_weights"] == [0.75, 0.25]
    ahead = [next(it) for _ in range(4)]
    it.close()
    again = _datasets(_cfg(tiny_data, tiny_chexpert)).train_iter(state)  # a new process's
    for a, b in zip(ahead, [next(again) for _ in range(4)], strict=True):
        assert set(a) == set(b) == {"image", "labels", "label_mask"}
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    again.close()
    other_weights = _datasets(_cfg(tiny_data, tiny_chexpert, weights=(1, 1))).train_iter()
    with pytest.raises(ValueError, match="different input pipeline"):
        other_weights.set_state(state)
    one_source = _datasets(_cfg(tiny_data, tiny_chexpert, weights=(), source="nih")).train_iter()
    with pytest.raises(ValueError, match="different input pipeline"):
        one_source.set_state(state)


def test_validation_and_test_are_the_first_sources_and_train_is_both(tiny_data, tiny_chexpert,
                                                                     mixed):
    alone = _datasets(_cfg(tiny_data, tiny_chexpert, weights=(), source="nih"))
    for split in ("val", "test"):
        assert mixed.image_ids(split) == alone.image_ids(split)
    assert set(alone.image_ids("train")) < set(mixed.image_ids("train"))
    assert mixed.steps_per_epoch == mixed.num_examples("train") // 8
    assert not mixed.records.masked  # so the evaluator scores it as an NIH run (W-AUC, ...)
    assert mixed.num_examples("test") % 16  # a padded last batch
    for batch in mixed.eval_batches("test"):
        assert batch["label_mask"].shape == batch["labels"].shape == (16, 14)
        assert batch["label_mask"][batch["mask"]].all()  # NIH rows: every label known


@pytest.mark.parametrize("source, weights, message", [
    ("nih+chestmnist", (), r"\['chestmnist'\] cannot be mixed"),
    ("nih+nih", (), "names a source twice"),
    ("nih+synthetic", (), "mixes two sets in nih's layout"),
    ("chexpert+synthetic_chexpert", (), "mixes two sets in chexpert's layout"),
    ("nih+openi", (), r"\['openi'\] cannot be mixed"),
    ("nih+chexpert", (1, 2, 3), "has 3 weights for the 2 sources"),
    ("nih+chexpert", (1, 0), "every weight must be a positive number"),
    ("nih+chexpert", (1, float("nan")), "every weight must be a positive number"),
])
def test_a_bad_mix_is_one_config_error_naming_the_field(source, weights, message):
    config = recipe.row("r18")
    config.data.source, config.data.source_weights = source, weights
    with pytest.raises(ConfigError, match=message):
        check_config(config)


def test_a_mix_with_default_weights_passes_and_weighs_its_sources_equally():
    config = recipe.row("r18")
    config.data.source = "synthetic+synthetic_padchest+chexpert"
    check_config(config)
    assert mixing.weights_of(config.data) == (1 / 3, 1 / 3, 1 / 3)


def test_a_mixed_runs_config_reads_one_of_its_sources_from_its_data_dirs_entry(
        tiny_data, tiny_chexpert):
    """``evaluate --dataset chexpert`` of a mixed run: the run's config, pointed at one source,
    passes the checks (its weights unread) and finds that source in ``data.data_dirs``."""
    from cxrjax.evaluation import external

    config = recipe.row("r18")
    config.data = _cfg(tiny_data, tiny_chexpert)
    one = external.dataset_config(config, "chexpert").data
    assert one.data_dir == str(tiny_data / "tfds")  # no chexpert there: data_dirs says where
    assert pipeline.ensure_prepared(one, "unused").data_dir == str(tiny_chexpert / "tfds")
    assert _datasets(one).num_examples("test") > 0


def test_two_hosts_read_halves_of_the_same_mixed_global_batches(tiny_data, tiny_chexpert,
                                                                 mixed):
    d = _cfg(tiny_data, tiny_chexpert)
    prepared = pipeline.ensure_prepared(d, "unused")
    hosts = [pipeline.create_datasets(d, prepared, global_batch_size=8, eval_batch_size=16,
                                      seed=0, process_index=i, process_count=2).train_iter()
             for i in range(2)]
    whole = mixed.train_iter()
    for _ in range(3):
        halves = [next(h) for h in hosts]
        batch = next(whole)
        for key in batch:
            np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), batch[key])
    for it in (*hosts, whole):
        it.close()


def test_the_mixed_order_survives_pickling_for_grain_workers(mixed):
    order = mixed.mix.order(mixed.seed)
    copy = pickle.loads(pickle.dumps(order))
    assert [copy(g) for g in range(50)] == [order(g) for g in range(50)]
