"""A run's limitations come from its recorded config, for a ConfigDict or its JSON alike."""

import importlib
import json

from cxrjax.evaluation import limitations


def _config(name):
    return importlib.import_module(f"configs.{name}").get_config()


def test_the_demo_is_flagged_synthetic_and_a_paper_row_has_no_limitation():
    demo = limitations.run_limitations(_config("demo"))
    assert len(demo) == 1 and "synthetic" in demo[0].short and "not X-rays" in demo[0].short
    assert "real X-rays mean nothing" in demo[0].text
    assert limitations.run_limitations(_config("r18_msml")) == ()
    assert limitations.warning_text(()) == ""
    assert limitations.warning_text(demo) == demo[0].short


def test_chestmnist_is_flagged_with_its_size_and_a_json_config_reads_the_same():
    c = _config("r18")
    c.data.source, c.data.resolution = "chestmnist", 64
    found = limitations.run_limitations(c)
    assert len(found) == 1 and "ChestMNIST (64 px)" in found[0].text
    recorded = json.loads(c.to_json_best_effort())  # what config.json holds
    assert limitations.run_limitations(recorded) == found
    assert limitations.run_limitations({}) == ()  # no data section: NIH, the default


def test_a_mix_with_a_synthetic_source_is_flagged_and_a_real_mix_is_not():
    c = _config("r18")
    c.data.source = "nih+synthetic_chexpert"
    found = limitations.run_limitations(c)
    assert len(found) == 1 and "synthetic" in found[0].short
    assert "nih+synthetic_chexpert" in found[0].text and "synthetic_chexpert" in found[0].text
    assert "real X-rays mean nothing" in found[0].text
    assert limitations.run_limitations({"data": {"source": "synthetic_padchest"}}) != ()
    assert limitations.run_limitations({"data": {"source": "nih+chexpert"}}) == ()
