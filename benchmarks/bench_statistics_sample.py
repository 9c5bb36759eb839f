"""Sampled vs full slide statistics: percentiles of every channel from all chunks and from the sample.

Usage::

    .venv/bin/python benchmarks/bench_statistics_sample.py SLIDE.ome.zarr [--fraction F]

Prints a Markdown table (channel, percentile, full, sample, relative difference) for the
percentiles the backends use (1, 50, 99, 99.9); ``--fraction`` defaults to what
``statistics_sample="auto"`` picks for the slide.
"""

from __future__ import annotations

import argparse

import numpy as np

from tiledseg.io import open_slide
from tiledseg.segment._statistics import (
    finalize_statistics,
    histogram_partial,
    merge_histograms,
    merge_minmax,
    minmax_partial,
)
from tiledseg.tiling import sample_blocks, statistics_fraction


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("slide")
    parser.add_argument("--fraction", type=float, default=None)
    args = parser.parse_args()
    slide = open_slide(args.slide)
    names = list(slide.channel_names)
    _, ny, nx = slide.image.shape
    chunks = tuple(int(c) for c in slide.image.chunksize[1:])
    fraction = args.fraction if args.fraction is not None else statistics_fraction((ny, nx))

    def stats(windows: list[tuple[tuple[int, int], tuple[int, int]]]):  # type: ignore[no-untyped-def]
        blocks = [np.asarray(slide.image[:, r0:r1, c0:c1].compute(scheduler="sync")) for (r0, r1), (c0, c1) in windows]
        minmax = merge_minmax([minmax_partial(b) for b in blocks])
        counts = merge_histograms([histogram_partial(b, minmax) for b in blocks])
        pixels = sum((r1 - r0) * (c1 - c0) for (r0, r1), (c0, c1) in windows)
        return finalize_statistics(names, minmax, counts, n_pixels=pixels)

    full_windows = sample_blocks((ny, nx), chunks, fraction=1.0)
    sample_windows = sample_blocks((ny, nx), chunks, fraction=fraction)
    full, sample = stats(full_windows), stats(sample_windows)
    print(f"{args.slide}: sample of {len(sample_windows)} / {len(full_windows)} chunks ({fraction:.3f})\n")
    print("| channel | percentile | full | sample | relative difference |\n|---|---|---|---|---|")
    for name in names:
        for q in (1.0, 50.0, 99.0, 99.9):
            a, b = full.percentile(name, q), sample.percentile(name, q)
            print(f"| {name} | {q} | {a:.4g} | {b:.4g} | {100 * abs(b - a) / max(abs(a), 1e-12):.2f} % |")


if __name__ == "__main__":
    main()
