"""Synthetic sets in the CheXpert, MIMIC-CXR-JPG and PadChest layouts, prepared through the real
builders: the same chests and NIH labels come back as each release's label states."""

import numpy as np
import pytest

from cxrjax.data import builder, label_space, labels, release_builder, synthetic

AT = label_space.CLASS_INDEX
P, N, U = label_space.POSITIVE, label_space.NEGATIVE, label_space.UNCERTAIN
SHARED_WITH_CHEXPERT = ("Atelectasis", "Cardiomegaly", "Effusion", "Pneumonia", "Pneumothorax",
                        "Consolidation", "Edema")


@pytest.mark.parametrize("fmt", ["chexpert", "mimic_cxr", "padchest"])
def test_each_format_prepares_with_the_nih_labels_in_its_terms(tmp_path, fmt):
    n = 40
    assert synthetic.main(["--out", str(tmp_path / "raw"), "--n", str(n), "--size", "32",
                           "--format", fmt, "--workers", "0"]) == 0
    b = release_builder.build(fmt, str(tmp_path / "raw"), str(tmp_path / "out"),
                              resolution=16, workers=0)
    src = b.as_data_source(split=builder.SPLIT)
    assert len(src) == n and b.info.metadata["excluded"] == {}
    table = labels.load_label_table()
    rows = synthetic.sample_rows(n, 0)
    nih = {int(table.patient_ids[i]) * 1000 + int(table.follow_up[i]): table.labels[i]
           for i in rows}
    states = np.stack([src[i]["label_states"] for i in range(n)])
    assert all(src[i]["image"].std() > 0 for i in range(n))  # drawn chests, not blanks
    if fmt == "padchest":  # every NIH class has a PadChest term: exactly the NIH labels
        got = sorted(map(tuple, (states[:, :14] == P).astype(np.uint8).tolist()))
        assert got == sorted(tuple(nih[k].tolist()) for k in nih)
    else:  # the shared classes come back positive or uncertain, the rest negative
        want = np.stack([nih[k] for k in sorted(nih)])
        cols = [AT[c] for c in SHARED_WITH_CHEXPERT]
        nih_cols = [labels.CLASS_INDEX[c] for c in SHARED_WITH_CHEXPERT]
        assert (np.isin(states[:, cols], (P, U))).sum() == want[:, nih_cols].sum()
        assert set(np.unique(states[:, AT["Mass"]])) == {label_space.MISSING}
    assert (states[:, AT["No Finding"]] == P).sum() == sum(not v.any() for v in nih.values())


def test_unknown_format_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        synthetic.main(["--out", str(tmp_path), "--n", "4", "--format", "openi"])
    assert "invalid choice: 'openi'" in capsys.readouterr().err


def test_site_same_changes_nothing_and_other_shifts_exposure_noise_marker():
    from cxrjax.data import synthetic_formats as sf

    image = synthetic.render(np.zeros(14, np.uint8), 64, 1, 2).image
    assert sf.apply_site(image, sf.SITES["same"], 0) is image
    shifted = sf.apply_site(image, sf.SITES["other"], 0).astype(float)
    assert shifted.mean() > image.mean() + 10  # gamma 0.6 brightens
    side = 64 // 12
    assert np.all(shifted[side:2 * side, side:2 * side] == 255)
    assert np.array_equal(shifted, sf.apply_site(image, sf.SITES["other"], 0))  # seeded


def test_site_other_sets_the_no_finding_share_and_is_written_as_16_bit(tmp_path):
    from PIL import Image

    from cxrjax.data import padchest_layout

    out = tmp_path / "other"
    assert synthetic.main(["--out", str(out), "--n", "40", "--size", "48", "--format",
                           "padchest", "--site", "other", "--workers", "0"]) == 0
    scan = padchest_layout.scan(str(out))
    normal = sum(r.states[AT["No Finding"]] == P for r in scan.rows)
    assert len(scan.rows) == 40 and normal == 10  # 25% instead of NIH's ~54%
    pixels = np.asarray(Image.open(scan.rows[0].path))
    assert pixels.dtype == np.uint16 and pixels[4:8, 4:8].min() == 255 * 16  # the marker
    with pytest.raises(ValueError, match="--site applies to"):
        synthetic.generate_format(str(tmp_path / "n"), "nih", 4, site="other")
