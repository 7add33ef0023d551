"""python -m cxrjax.export: a tiny run's folder, its entries, its contract and its errors."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from export_helpers import CROP, RES, exported_run
from jax import export as jax_export

from cxrjax import export
from cxrjax.serving import decode, files


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return exported_run(tmp_path_factory)


def test_the_folder_holds_every_part_for_cpu_cuda_and_tpu(exported):
    workdir, out = exported
    manifest = json.loads(open(os.path.join(out, files.MANIFEST)).read())
    assert manifest["platforms"] == ["cpu", "cuda", "tpu"]
    assert manifest["platforms_not_lowered"] == {}
    assert manifest["heads"] == ["fused", "ce", "fce", "msml"]
    assert (manifest["resolution"], manifest["crop"]) == (RES, CROP)
    assert manifest["reference"]["exported_vs_run_max_abs_diff"] <= files.TOLERANCE
    assert [x["short"] for x in manifest["limitations"]] == [
        "trained on synthetic images, not X-rays"]
    for name in (*files.HASHED, files.THRESHOLDS, files.CALIBRATION, files.MODEL_CARD,
                 files.EXPECTED, *(f"{files.REFERENCE}/{n}" for n in
                                   manifest["reference"]["inputs"])):
        assert os.path.isfile(os.path.join(out, name)), name
    assert len(manifest["reference"]["inputs"]) == 3
    assert [n for n in os.listdir(os.path.dirname(out)) if ".tmp-" in n] == []
    steps = json.loads(open(os.path.join(out, files.PREPROCESSING)).read())["steps"]
    assert [s["step"] for s in steps] == ["decode", "resize", "centre_crop", "normalise"]
    assert steps[1]["size"] == [RES, RES] and "BILINEAR" in steps[1]["method"]
    assert steps[2]["offset"] == [(RES - CROP) // 2] * 2
    assert steps[3]["mean"] == [0.485, 0.456, 0.406] and steps[3]["std"] == [0.229, 0.224, 0.225]
    card = open(os.path.join(out, files.MODEL_CARD)).read()
    assert "NOT a medical device" in card and "synthetic images" in card


def test_each_entry_has_a_symbolic_batch_and_uint16_is_uint8_scaled(exported):
    _, out = exported
    entries = {}
    for dtype, name in files.ENTRIES.items():
        with open(os.path.join(out, name), "rb") as f:
            entries[dtype] = jax_export.deserialize(bytearray(f.read()))
        images = entries[dtype].in_avals[-1]
        assert str(images.shape[0]) == "batch" and images.shape[1:] == (CROP, CROP, 1)
        assert images.dtype == np.dtype(dtype)
    with np.load(os.path.join(out, files.WEIGHTS)) as saved:
        leaves = [saved[f"leaf_{i:05d}"] for i in range(len(saved.files))]
    crops = np.random.default_rng(0).integers(0, 256, (5, CROP, CROP, 1), dtype=np.uint8)
    outs = {}
    for dtype, entry in entries.items():
        x = crops if dtype == "uint8" else crops.astype(np.uint16) * np.uint16(257)
        (w, images), _ = jax.tree.unflatten(entry.in_tree, [*leaves, x])
        outs[dtype] = jax.device_get(entry.call(w, images))
    assert set(outs["uint8"]) == {"fused", "ce", "fce", "msml"}
    for head, p in outs["uint8"].items():
        assert p.shape == (5, 14)
        # Two programs (the uint8 and the uint16 entry) fed the same values (the next test checks
        # the conversion bit for bit): equal to float rounding; bitwise only where XLA happens
        # to compile both alike (with its fusion emitters on CPU it does; without, 1 ulp once).
        np.testing.assert_allclose(p, outs["uint16"][head], rtol=0, atol=2e-7)


def test_the_uint16_rule_inside_jit_equals_the_decoders_for_every_value():
    values = np.arange(65536, dtype=np.uint16)
    inside = np.asarray(jax.jit(export.uint16_to_uint8)(jnp.asarray(values)))
    np.testing.assert_array_equal(inside, decode.sixteen_to_uint8(values, 65535.0))


def test_a_platform_that_does_not_lower_is_left_out_and_named(monkeypatch):
    real = jax_export.export

    def no_tpu(fn, platforms):
        if "tpu" in platforms:
            raise NotImplementedError("no lowering rule for tpu here\nmore detail")
        return real(fn, platforms=platforms)

    monkeypatch.setattr(export.jax_export, "export", no_tpu)
    spec = jax.ShapeDtypeStruct((3,), np.float32)
    exported, failed = export.lower(lambda x: x * 2, (spec,), ("cpu", "cuda", "tpu"))
    assert exported.platforms == ("cpu", "cuda")
    assert failed == {"tpu": "NotImplementedError: no lowering rule for tpu here"}


def test_bad_arguments_are_one_line_errors_and_write_nothing(exported, tmp_path, capsys):
    workdir, out = exported
    cases = [
        (["--workdir", workdir, "--out", out], "exists and is not an empty folder"),
        (["--workdir", str(tmp_path / "nope"), "--out", str(tmp_path / "a")],
         "workdir not found"),
        (["--workdir", workdir, "--out", str(tmp_path / "b"), "--platforms", "cpu,metal"],
         "--platforms 'cpu,metal': choose from cpu, cuda, tpu"),
        (["--workdir", workdir, "--out", str(tmp_path / "c"), "--reference",
          str(tmp_path / "missing.png")], "missing.png"),
    ]
    for argv, message in cases:
        assert export.main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert sorted(os.listdir(tmp_path)) == []


def test_an_entry_that_drifts_from_the_run_is_refused_at_the_compute_dtypes_bound():
    run = {"fused": np.full((2, 14), 0.5)}
    off = {"fused": np.full((2, 14), 0.5 + 2e-5, np.float32)}
    with pytest.raises(RuntimeError, match=r"uint8 entry differs from the run's model by 2\.0"):
        export.check_against_run(off, run, jnp.float32, "uint8")
    assert export.check_against_run(off, run, jnp.bfloat16, "uint8") < 1e-4
    far = {"fused": np.full((2, 14), 0.6, np.float32)}
    with pytest.raises(RuntimeError, match=r"> 0\.01\); nothing was written"):
        export.check_against_run(far, run, jnp.bfloat16, "uint16")
