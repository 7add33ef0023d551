"""figure_layout.place_grid: the report's grids placed by inches, without tight_layout."""

import pytest
from matplotlib.figure import Figure

from cxrjax.evaluation.figure_layout import place_grid


def test_a_grid_has_the_asked_margins_and_gaps_in_inches():
    fig = Figure(figsize=(12.8, 6.4))
    axes = fig.subplots(2, 4)
    place_grid(fig, left=0.6, right=0.15, bottom=0.5, top=0.8, wspace=0.2, hspace=0.4)
    width, height = fig.get_size_inches()
    boxes = [[ax.get_position() for ax in row] for row in axes]  # figure fractions
    assert boxes[0][0].x0 * width == pytest.approx(0.6)
    assert (1 - boxes[0][-1].x1) * width == pytest.approx(0.15)
    assert boxes[-1][0].y0 * height == pytest.approx(0.5)
    assert (1 - boxes[0][0].y1) * height == pytest.approx(0.8)
    assert (boxes[0][1].x0 - boxes[0][0].x1) * width == pytest.approx(0.2)
    assert (boxes[0][0].y0 - boxes[1][0].y1) * height == pytest.approx(0.4)


def test_margins_wider_than_the_figure_are_refused_in_one_line():
    fig = Figure(figsize=(2, 2))
    fig.subplots(2, 2)
    with pytest.raises(ValueError, match=r"a 2x2 in figure has no room for 2x2 panels"):
        place_grid(fig, left=1, right=1, bottom=0.5, top=0.5, wspace=0.2, hspace=0.2)
