"""Tile grid, core/halo windows, ownership geometry and statistics samples (numpy only)."""

from __future__ import annotations

from tiledseg.tiling._plan import Tile, TilePlan, halo_from_physics, plan_tiles
from tiledseg.tiling._sample import sample_blocks, statistics_fraction

__all__ = ["Tile", "TilePlan", "halo_from_physics", "plan_tiles", "sample_blocks", "statistics_fraction"]
