"""cxrjax.data.dicom on the two real DICOMs and on small DICOMs made here with pydicom: each
display transform against its definition, every refusal and every warning."""

import io
import pathlib
import sys

import numpy as np
import pytest
from PIL import Image

from cxrjax.data import dicom

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.encaps import encapsulate  # noqa: E402
from pydicom.uid import (  # noqa: E402
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    generate_uid,
)

REAL = pathlib.Path(__file__).resolve().parents[2].parent / "shared/data/dicom"


def make_dicom(path, pixels, *, photometric="MONOCHROME2", bits_stored=None, frames=1,
               syntax=ExplicitVRLittleEndian, encoded=None, **tags):
    """A DICOM file of ``pixels`` ((H, W), (H, W, 3) or (frames, H, W); uint8 or uint16),
    written native unless ``encoded`` (compressed frames) is given; ``tags`` set as they are."""
    pixels = np.asarray(pixels)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    colour = photometric in ("RGB", "YBR_FULL")
    shape = pixels.shape[1:] if frames > 1 else pixels.shape
    ds.Rows, ds.Columns = shape[0], shape[1]
    ds.SamplesPerPixel = 3 if colour else 1
    if colour:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = pixels.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.Modality, ds.ViewPosition, ds.PatientSex, ds.PatientAge = "DX", "PA", "F", "045Y"
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    if encoded is not None:
        ds.PixelData = encapsulate(encoded)
        ds["PixelData"].VR = "OB"
    else:
        ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
        ds["PixelData"].VR = "OW" if ds.BitsAllocated > 8 else "OB"
    ds.save_as(path, enforce_file_format=True)
    return str(path)


def ramp(height=16, width=24, high=255, dtype=np.uint8):
    return np.linspace(0, high, height * width).round().astype(dtype).reshape(height, width)


def test_the_real_monochrome1_file_decodes_to_the_inverse_of_the_monochrome2_one():
    m2, m1 = REAL / "siim_pneumothorax_sample.dcm", REAL / "monochrome1_sample.dcm"
    if not m2.is_file():
        pytest.skip(f"the real DICOMs are absent (looked in {REAL})")
    first, second = dicom.read_dicom(str(m2)), dicom.read_dicom(str(m1))
    assert first.pixels.shape == (1024, 1024) and first.pixels.dtype == np.uint8
    np.testing.assert_array_equal(second.pixels, 255 - first.pixels)
    # JPEG Baseline through Pillow: the pixels are Pillow's decode of the embedded JPEG.
    frame = next(pydicom.encaps.generate_frames(pydicom.dcmread(m2).PixelData))
    np.testing.assert_array_equal(first.pixels, np.asarray(Image.open(io.BytesIO(frame))))
    assert (first.view_position, first.patient_sex, first.patient_age, first.modality) == (
        "PA", "M", "62", "CR")
    assert first.warnings == () and 30 < first.pixels.mean() < 220
    with open(m2, "rb") as f:
        assert dicom.is_dicom(f.read(132))
    assert not dicom.is_dicom(b"\x89PNG\r\n\x1a\n" + bytes(124))


def test_an_8_bit_file_keeps_its_values_and_monochrome1_inverts_them(tmp_path):
    pixels = ramp()
    plain = dicom.read_dicom(make_dicom(tmp_path / "m2.dcm", pixels))
    np.testing.assert_array_equal(plain.pixels, pixels)
    inverted = dicom.read_dicom(make_dicom(tmp_path / "m1.dcm", pixels,
                                           photometric="MONOCHROME1"))
    np.testing.assert_array_equal(inverted.pixels, 255 - pixels)


def test_12_bit_stored_values_span_their_own_range_not_16_bits(tmp_path):
    stored = np.array([[0, 2048, 4095, 1024]], np.uint16)
    got = dicom.read_dicom(make_dicom(tmp_path / "b12.dcm", stored, bits_stored=12)).pixels
    np.testing.assert_array_equal(got, np.round(stored / 4095 * 255).astype(np.uint8))
    assert got.max() == 255  # scaled by 65535 it would be 16 at most
    # Bits above BitsStored (overlay planes, garbage) are not part of the value.
    noisy = make_dicom(tmp_path / "noisy.dcm", stored | np.uint16(0xF000), bits_stored=12)
    np.testing.assert_array_equal(dicom.read_dicom(noisy).pixels, got)


def test_rescale_then_window_follow_the_standards_linear_function(tmp_path):
    # Modality value 2x - 1000; the LINEAR window (c 2048.5, w 2049) maps 1024..3072 to 0..1.
    stored = np.array([[0, 1012, 1524, 2036, 4095]], np.uint16)
    path = make_dicom(tmp_path / "win.dcm", stored, bits_stored=12, RescaleSlope=2,
                      RescaleIntercept=-1000, WindowCenter=2048.5, WindowWidth=2049)
    np.testing.assert_array_equal(dicom.read_dicom(path).pixels, [[0, 0, 128, 255, 255]])
    # Without the window, the rescaled stored range (-1000 .. 7190) is shown whole.
    path = make_dicom(tmp_path / "rescale.dcm", stored, bits_stored=12, RescaleSlope=2,
                      RescaleIntercept=-1000)
    want = np.round((2.0 * stored - 1000 + 1000) / 8190 * 255).astype(np.uint8)
    np.testing.assert_array_equal(dicom.read_dicom(path).pixels, want)
    # MONOCHROME1 inverts after the window, as a viewer shows it.
    path = make_dicom(tmp_path / "win1.dcm", stored, bits_stored=12, RescaleSlope=2,
                      RescaleIntercept=-1000, WindowCenter=2048.5, WindowWidth=2049,
                      photometric="MONOCHROME1")
    np.testing.assert_array_equal(dicom.read_dicom(path).pixels, [[255, 255, 128, 0, 0]])


def test_a_voi_lut_sequence_is_applied_before_the_window(tmp_path):
    stored = np.array([[0, 16, 160, 4095]], np.uint16)
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.add_new("LUTData", "US", [int(v) for v in 4095 - np.arange(4096)])  # reversing
    path = make_dicom(tmp_path / "lut.dcm", stored, bits_stored=12, VOILUTSequence=[item],
                      WindowCenter=0, WindowWidth=1)  # would make everything white
    got = dicom.read_dicom(path).pixels
    np.testing.assert_array_equal(got, np.round((4095 - stored) / 4095 * 255).astype(np.uint8))


def test_jpeg_2000_pixel_data_decodes_through_pillow(tmp_path):
    pixels = ramp(32, 32)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG2000", irreversible=False, no_jp2=True)
    path = make_dicom(tmp_path / "j2k.dcm", pixels, syntax=JPEG2000Lossless,
                      encoded=[buffer.getvalue()])
    np.testing.assert_array_equal(dicom.read_dicom(path).pixels, pixels)


def test_multi_frame_and_colour_files_are_refused_in_one_line_a_gray_rgb_is_read(tmp_path):
    frames = np.stack([ramp(), ramp()])
    with pytest.raises(dicom.DicomError, match=r"^multi-frame DICOM \(2 frames\)"):
        dicom.read_dicom(make_dicom(tmp_path / "mf.dcm", frames, frames=2))
    rng = np.random.default_rng(0)
    colour = rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)
    with pytest.raises(dicom.DicomError, match=r"^a colour \(RGB\) DICOM: only grayscale"):
        dicom.read_dicom(make_dicom(tmp_path / "rgb.dcm", colour, photometric="RGB"))
    gray = ramp()
    stored_as_rgb = make_dicom(tmp_path / "gray_rgb.dcm", np.dstack([gray] * 3),
                               photometric="RGB")
    np.testing.assert_array_equal(dicom.read_dicom(stored_as_rgb).pixels, gray)
    with pytest.raises(dicom.DicomError, match=r"^a PALETTE COLOR DICOM with 1 sample"):
        dicom.read_dicom(make_dicom(tmp_path / "pal.dcm", gray, photometric="PALETTE COLOR"))


def test_modality_lateral_view_and_a_childs_age_are_warnings_and_tags_are_carried(tmp_path):
    image = dicom.read_dicom(make_dicom(tmp_path / "w.dcm", ramp(), Modality="CT",
                                        ViewPosition="LL", PatientAge="012Y", PatientSex="F"))
    assert image.warnings == (
        "modality CT, not a radiograph (CR or DX)",
        "lateral view (LL): the model was trained on frontal views",
        "patient aged 012Y, under 18: the training data are mostly adults")
    assert (image.view_position, image.patient_sex, image.patient_age) == ("LL", "F", "012Y")
    adult = dicom.read_dicom(make_dicom(tmp_path / "ok.dcm", ramp(), PatientAge="018Y"))
    assert adult.warnings == ()
    assert [dicom.age_in_years(a) for a in ("062Y", "62", "006M", "010D", "", "abc")] == [
        62, 62, 0.5, 10 / 365.25, None, None]


def test_broken_oversized_and_pixelless_files_are_one_line_errors(tmp_path):
    path = make_dicom(tmp_path / "big.dcm", ramp())
    with pytest.raises(dicom.DicomError, match=r"24x16 px, over the 100-pixel limit"):
        dicom.read_dicom(path, max_pixels=100)
    data = pathlib.Path(path).read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[:len(data) - 200])
    with pytest.raises(dicom.DicomError) as info:
        dicom.read_dicom(str(cut))
    assert "\n" not in str(info.value)
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(tmp_path / "none.dcm")
    with pytest.raises(dicom.DicomError, match="without pixel data"):
        dicom.read_dicom(str(tmp_path / "none.dcm"))


def test_without_pydicom_a_dicom_is_a_one_line_error_naming_the_extra(tmp_path, monkeypatch):
    path = make_dicom(tmp_path / "x.dcm", ramp())
    monkeypatch.setitem(sys.modules, "pydicom", None)  # import pydicom now raises ImportError
    with pytest.raises(dicom.DicomError, match=r"needs pydicom: pip install 'cxrjax\[dicom\]'"):
        dicom.read_dicom(path)


def test_malformed_tag_values_are_one_line_errors_not_tracebacks(tmp_path):
    path = pathlib.Path(make_dicom(tmp_path / "bad.dcm", ramp(), NumberOfFrames=9))
    element = b"\x28\x00\x08\x00IS\x02\x009 "  # (0028,0008) NumberOfFrames, explicit VR
    data = path.read_bytes()
    assert data.count(element) == 1
    path.write_bytes(data.replace(element, element[:-2] + b"ab"))  # no longer a number
    with pytest.raises(dicom.DicomError, match=r"^unreadable DICOM"):
        dicom.read_dicom(str(path))


def test_a_cut_file_is_one_error_and_pydicom_logs_nothing_beside_it(tmp_path, caplog):
    import logging

    data = (REAL / "siim_pneumothorax_sample.dcm").read_bytes()
    path = tmp_path / "cut.dcm"
    path.write_bytes(data[:len(data) // 2])  # inside the encapsulated pixel data
    level = logging.getLogger("pydicom").level
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(dicom.DicomError, match="without pixel data .or cut short before it"):
            dicom.read_dicom(str(path))
    assert [r.getMessage() for r in caplog.records if r.name.startswith("pydicom")] == []
    assert logging.getLogger("pydicom").level == level  # restored after the read
