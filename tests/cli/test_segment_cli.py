"""``tiledseg segment`` / ``tiledseg measure`` options: models, probabilities, --param, --cluster."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
import tifffile
from typer.testing import CliRunner

import tiledseg.cli._measure as cli_measure
import tiledseg.cli._segment as cli_segment
from tiledseg.api import ClusterSpec, SegmentResult, example_cluster_config
from tiledseg.cli import app
from tiledseg.cli._segment import parse_params
from tiledseg.errors import ClusterConfigError, ParameterError
from tiledseg.io import open_labels, write_slide

runner = CliRunner()


@pytest.fixture()
def calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Record what the commands hand to the api (nothing runs)."""
    seen: list[dict[str, Any]] = []

    def fake_segment(slide: str, **kwargs: Any) -> SegmentResult:
        seen.append({"slide": slide, **kwargs})
        return SegmentResult(labels_url=f"{slide}/labels/cells", slide_url=slide, labels_name="cells",
                             backend=str(kwargs["backend"]), n_cells=3, n_tiles=1, n_truncated=0,
                             n_seam=0, seconds=0.1, tiles_computed=1, tiles_resumed=0)

    def fake_measure(slide: str, **kwargs: Any) -> Any:
        seen.append({"slide": slide, **kwargs})
        return SimpleNamespace(n_cells=3, channel_names=("DNA1",), seconds=0.1, paths=(), neighbors=None)

    monkeypatch.setattr(cli_segment, "segment", fake_segment)
    monkeypatch.setattr(cli_measure, "measure", fake_measure)
    return seen


# --------------------------------------------------------------------------- --param


def test_parse_params_json_values() -> None:
    got = parse_params([
        "max_growth_um=5", "distance_weight=0.25", "growth=nearest", "clip=[1, 99.5]",
        "threshold=null", "postprocess={\"radius\": 3}", "normalize=false", "hot_pixel_threshold=None",
        "nuclear=DNA1", "name= spaced ",
    ])
    assert got == {
        "max_growth_um": 5, "distance_weight": 0.25, "growth": "nearest", "clip": [1, 99.5],
        "threshold": None, "postprocess": {"radius": 3}, "normalize": False,
        "hot_pixel_threshold": None, "nuclear": "DNA1", "name": "spaced",
    }
    assert parse_params(["x=NaN"]) == {"x": "NaN"}  # not a number a backend could validate


@pytest.mark.parametrize(
    ("items", "match"),
    [
        (["max_growth_um"], "KEY=VALUE.*'max_growth_um'"),
        (["=5"], "KEY=VALUE"),
        (["max-growth=5"], "KEY=VALUE"),
        (["growth=nearest", "growth=membrane"], "sets 'growth' twice"),
    ],
)
def test_parse_params_errors(items: list[str], match: str) -> None:
    with pytest.raises(ParameterError, match=match):
        parse_params(items)


# --------------------------------------------------------------------------- segment options


def test_segment_model_probabilities_and_params(calls: list[dict[str, Any]], tmp_path: Path) -> None:
    model = tmp_path / "MultiplexSegmentation"
    res = runner.invoke(app, ["segment", "s.ome.zarr", "-b", "mesmer", "--model-path", str(model),
                              "--param", "compartment=nuclear", "-p", "model_batch_size=4",
                              "--nuclear", "DNA1,DNA2", "--allow-cpu"])
    assert res.exit_code == 0, res.output
    call = calls[-1]
    assert call["backend"] == "mesmer" and call["allow_cpu"] is True
    assert call["model_path"] == str(model) and call["compartment"] == "nuclear"
    assert call["model_batch_size"] == 4 and call["nuclear"] == ["DNA1", "DNA2"]
    assert call["inputs"] is None and call["client"] is None
    assert call["statistics_sample"] == "auto"

    res = runner.invoke(app, ["segment", "s.ome.zarr", "--statistics-sample", "0.25"])
    assert res.exit_code == 0, res.output
    assert calls[-1]["statistics_sample"] == "0.25"

    res = runner.invoke(app, ["segment", "s.ome.zarr", "-b", "cellpose", "--model", "nuclei",
                              "--param", "diameter_um=12.5"])
    assert res.exit_code == 0, res.output
    assert calls[-1]["model"] == "nuclei" and calls[-1]["diameter_um"] == 12.5

    probs = tmp_path / "probs.tiff"
    res = runner.invoke(app, ["segment", "s.ome.zarr", "-b", "probabilities", "--probabilities", str(probs),
                              "--param", "scale=255"])
    assert res.exit_code == 0, res.output
    assert calls[-1]["inputs"] == {"probabilities": str(probs)} and calls[-1]["scale"] == 255


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--nuclear", "DNA1", "--param", "nuclear=DNA2"], "--nuclear and `--param nuclear=...`"),
        (["--model", "cyto3", "--param", "model=nuclei"], "--model and `--param model=...`"),
        (["--param", "tile_size=256"], r"\['tile_size'\].*options of `tiledseg segment`"),
        (["--param", "growth"], "KEY=VALUE"),
    ],
)
def test_segment_param_conflicts(calls: list[dict[str, Any]], args: list[str], match: str) -> None:
    res = runner.invoke(app, ["segment", "s.ome.zarr", *args])
    assert isinstance(res.exception, ParameterError), res.output
    assert re.search(match, str(res.exception)), str(res.exception)
    assert not calls


# --------------------------------------------------------------------------- --cluster


@pytest.mark.parametrize("command", ["segment", "measure"])
def test_cluster_option(calls: list[dict[str, Any]], tmp_path: Path, command: str) -> None:
    res = runner.invoke(app, [command, "s.ome.zarr", "--cluster", "local", "--workers", "3"])
    assert res.exit_code == 0, res.output
    spec = calls[-1]["client"]
    assert isinstance(spec, ClusterSpec) and spec.kind == "local" and spec.workers == 3
    assert calls[-1]["n_workers"] is None

    res = runner.invoke(app, [command, "s.ome.zarr", "--cluster", "tcp://scheduler:8786"])
    assert res.exit_code == 0, res.output
    assert calls[-1]["client"].kind == "address" and calls[-1]["client"].address == "tcp://scheduler:8786"

    config = tmp_path / "slurm.toml"
    config.write_text(example_cluster_config("slurm"), encoding="utf-8")
    res = runner.invoke(app, [command, "s.ome.zarr", "--cluster", str(config)])
    assert res.exit_code == 0, res.output
    assert calls[-1]["client"].kind == "slurm"

    # without --cluster: the scheduler address and --workers as before
    res = runner.invoke(app, [command, "s.ome.zarr", "--scheduler", "tcp://h:1", "--workers", "2"])
    assert res.exit_code == 0, res.output
    assert calls[-1]["client"] == "tcp://h:1" and calls[-1]["n_workers"] == 2


@pytest.mark.parametrize("command", ["segment", "measure"])
def test_cluster_option_errors(calls: list[dict[str, Any]], command: str) -> None:
    res = runner.invoke(app, [command, "s.ome.zarr", "--cluster", "slurn"])
    assert isinstance(res.exception, ClusterConfigError) and "did you mean 'slurm'" in str(res.exception)
    res = runner.invoke(app, [command, "s.ome.zarr", "--cluster", "local", "--scheduler", "tcp://h:1"])
    assert isinstance(res.exception, ClusterConfigError) and "only one of" in str(res.exception)
    assert not calls


# --------------------------------------------------------------------------- end to end


def test_segment_probabilities_end_to_end(tmp_path: Path) -> None:
    """A real run: the probability map from a TIFF, parameters from --param, a local cluster."""
    yy, xx = np.mgrid[:64, :64]
    nuclei = np.zeros((64, 64), bool)
    for r, c in ((14, 14), (14, 46), (46, 14), (46, 46)):
        nuclei |= (yy - r) ** 2 + (xx - c) ** 2 <= 16
    cells = np.zeros((64, 64), bool)
    for r, c in ((14, 14), (14, 46), (46, 14), (46, 46)):
        cells |= (yy - r) ** 2 + (xx - c) ** 2 <= 49
    probs = np.stack([nuclei, cells & ~nuclei, ~cells]).astype(np.float32) * 0.9 + 0.1 / 3
    tiff = tmp_path / "probs.tiff"
    tifffile.imwrite(tiff, probs, photometric="minisblack", metadata={"axes": "CYX"})
    panel = pd.DataFrame({"channel": ["Ir191"], "name": ["DNA1"], "keep": [1]})
    slide = write_slide(str(tmp_path / "s.ome.zarr"), probs[:1] * 10, channel_names=["DNA1"],
                        pixel_size_um=1.0, chunks=(1, 32, 32), panel=panel)
    res = runner.invoke(app, ["segment", slide, "-b", "probabilities", "--probabilities", str(tiff),
                              "--param", "nucleus_threshold=0.5", "--param", "max_growth_um=3",
                              "--tile-size", "32", "--halo-um", "16", "--cluster", "local", "--workers", "1"])
    assert res.exit_code == 0, res.output
    assert "4 cells in 4 tiles" in res.output
    labels = open_labels(slide)
    assert labels.metadata["backend_params"]["max_growth_um"] == 3
    assert int(labels.data.max().compute()) == 4
