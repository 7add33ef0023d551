"""Subplot grids placed with margins and gaps in inches: the place ``tight_layout`` would find
for the report's fixed grids, without measuring every label of every panel (about half of a
grid figure's drawing time)."""

from __future__ import annotations

from typing import Any


def place_grid(fig: Any, *, left: float, right: float, bottom: float, top: float,
               wspace: float, hspace: float) -> None:
    """Sets ``fig``'s subplot grid so that the figure's edges and the gaps between panels are
    the given inches (``top`` holds the suptitle and the first row's titles)."""
    width, height = fig.get_size_inches()
    rows, cols = fig.axes[0].get_subplotspec().get_gridspec().get_geometry()
    panel_width = (width - left - right - (cols - 1) * wspace) / cols
    panel_height = (height - bottom - top - (rows - 1) * hspace) / rows
    if panel_width <= 0 or panel_height <= 0:
        raise ValueError(f"a {width:g}x{height:g} in figure has no room for {rows}x{cols} "
                         "panels with these margins")
    fig.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height,
                        top=1 - top / height, wspace=wspace / panel_width,
                        hspace=hspace / panel_height)
