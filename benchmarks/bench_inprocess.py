"""End-to-end `tiledseg.segment` on one core, in one process (no worker start-up or inter-process traffic).

Usage::

    .venv/bin/python benchmarks/bench_inprocess.py SLIDE.ome.zarr auto full auto

Runs the default `watershed` once per statistics mode given (``auto``, ``full`` or a fraction) on
tiledseg's embedded cluster with one worker thread in this process (``open_client(processes=False,
n_workers=1, threads_per_worker=1)``, the settings users get), recomputing the statistics each time,
and prints one Markdown row per run: cells, wall, process CPU, Mpx/s, Mpx per CPU second, CPU per
stage and the fitted thresholds. The first run also pays imports and loading compiled kernels.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from typing import Any

from tiledseg.api import segment
from tiledseg.cluster import open_client
from tiledseg.io import open_labels


def main() -> None:
    url, modes = sys.argv[1], sys.argv[2:] or ["auto"]
    stage_cpu: dict[str, list[float]] = {}

    def progress(event: Any) -> None:
        if event.kind == "start":
            stage_cpu.setdefault(event.stage, []).append(-time.process_time())
        elif event.kind == "end":
            stage_cpu[event.stage][-1] += time.process_time()

    print("| statistics | Mpx | cells | wall s | CPU s | Mpx/s | Mpx per CPU s | stage CPU s | fitted |")
    print("|---|---|---|---|---|---|---|---|---|")
    with open_client(processes=False, n_workers=1, threads_per_worker=1) as client:
        for mode in modes:
            shutil.rmtree(f"{url}/.tiledseg", ignore_errors=True)
            stage_cpu.clear()
            sample: str | float = float(mode) if mode[0].isdigit() else mode
            cpu0, wall0 = time.process_time(), time.perf_counter()
            result = segment(url, client=client, statistics_sample=sample, overwrite=True, progress=progress)
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            meta = dict(open_labels(url, "cells").attrs["tiledseg"])
            rows, cols = meta["tile_plan"]["shape"]
            mpx = rows * cols / 1e6
            stages = " / ".join(f"{k} {sum(v):.1f}" for k, v in stage_cpu.items())
            print(f"| {mode} | {mpx:.1f} | {result.n_cells} | {wall:.1f} | {cpu:.1f} | {mpx / wall:.2f} | "
                  f"{mpx / cpu:.2f} | {stages} | {json.dumps(meta['fitted'])} |", flush=True)


if __name__ == "__main__":
    main()
