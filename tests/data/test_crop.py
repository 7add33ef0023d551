"""Tests of the one centre crop shared by the pipeline, predict, heatmaps and boxes."""

import numpy as np
import pytest

from cxrjax.data.crop import centre_crop, centre_crop_offset
from cxrjax.evaluation import boxes as localization


@pytest.mark.parametrize("size, crop, offset", [(256, 224, 16), (112, 96, 8), (40, 32, 4),
                                                (41, 32, 4), (32, 32, 0)])
def test_offset_centres_the_crop_rounding_down(size, crop, offset):
    assert centre_crop_offset(size, crop) == offset


def test_a_crop_larger_than_the_image_is_refused_in_one_line():
    with pytest.raises(ValueError, match="a 300-px crop does not fit a 256-px image"):
        centre_crop_offset(256, 300)


def test_centre_crop_takes_the_window_at_the_offset_as_one_channel():
    image = np.arange(10 * 10, dtype=np.uint8).reshape(10, 10)
    out = centre_crop(image, 6)
    assert out.shape == (6, 6, 1) and out.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(out[..., 0], image[2:8, 2:8])


def test_boxes_map_through_the_same_offset_as_the_pixels():
    crop_box = localization.original_to_crop([[64, 64, 128, 128]], (1024, 1024), 256, 224)
    offset = centre_crop_offset(256, 224)
    np.testing.assert_allclose(crop_box, [[16 - offset, 16 - offset, 32, 32]])
