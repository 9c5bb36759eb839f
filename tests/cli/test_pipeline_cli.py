"""The ``run``, ``demo`` and ``cluster`` commands and the progress reporter."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from distributed import LocalCluster
from rich.console import Console
from typer.testing import CliRunner

from tiledseg.cli import app, main
from tiledseg.cli._progress import progress_reporter
from tiledseg.datasets import write_synthetic_slide
from tiledseg.errors import (
    ClusterConfigError,
    OutputExistsError,
    ParameterError,
    SlideNotFoundError,
)
from tiledseg.progress import ProgressEvent

runner = CliRunner()


@pytest.fixture(scope="module")
def address() -> Iterator[str]:
    """A scheduler reachable over TCP, with two single-threaded in-process workers."""
    with LocalCluster(processes=False, protocol="tcp", n_workers=2, threads_per_worker=1,
                      dashboard_address=":0") as cluster:
        yield cluster.scheduler_address


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> str:
    return write_synthetic_slide(str(tmp_path_factory.mktemp("cli") / "s.ome.zarr"), (256, 256), 4,
                                 seed=2, chunks=(1, 128, 128))


# --------------------------------------------------------------------------- cluster


def test_cluster_config_and_show(tmp_path: Path) -> None:
    cfg = tmp_path / "slurm.toml"
    res = runner.invoke(app, ["cluster", "config", "slurm", "-o", str(cfg)])
    assert res.exit_code == 0, res.output
    assert "[cluster]" in cfg.read_text()
    res = runner.invoke(app, ["cluster", "show", "--config", str(cfg)])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output.split("\n#")[0])["kind"] == "slurm"
    assert "#SBATCH --mem=32G" in res.output
    res = runner.invoke(app, ["cluster", "config", "slurm", "-o", str(cfg)])
    assert isinstance(res.exception, OutputExistsError)
    res = runner.invoke(app, ["cluster", "config", "kubernetes"])
    assert res.exit_code == 0 and 'kind = "kubernetes"' in res.output
    k8s = tmp_path / "k8s.toml"
    k8s.write_text('[cluster]\nkind = "kubernetes"\ngpus = 1\nmemory = "8GiB"\n')
    res = runner.invoke(app, ["cluster", "show", "--config", str(k8s)])
    assert res.exit_code == 0 and '"nvidia.com/gpu": "1"' in res.output


def test_cluster_info_against_a_scheduler(address: str) -> None:
    res = runner.invoke(app, ["cluster", "info", "--scheduler", address, "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["scheduler"] == address and len(info["workers"]) == 2
    res = runner.invoke(app, ["cluster", "info", "--scheduler", address])
    assert res.exit_code == 0
    assert "dashboard:" in res.output and "2 workers" in res.output


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        (["cluster", "info", "--cluster", "slrum"], ClusterConfigError, "did you mean 'slurm'"),
        (["cluster", "info", "--scheduler", "localhost"], ClusterConfigError, "not an address"),
        (["cluster", "info", "--scheduler", "tcp://a:1", "--cluster", "local"], ClusterConfigError, "only one of"),
        (["cluster", "info", "--config", "/nonexistent.toml"], ClusterConfigError, "does not exist"),
        (["cluster", "config", "slurmm"], ClusterConfigError, "unknown cluster kind"),
    ],
)
def test_cluster_errors(args: list[str], error: type[Exception], match: str) -> None:
    res = runner.invoke(app, args)
    assert isinstance(res.exception, error)
    assert match in str(res.exception)


def test_cli_error_is_one_line_without_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capfd: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[cluster]\nkind = "slurm"\nmemory = "lots"\n')
    monkeypatch.setattr(sys, "argv", ["tiledseg", "cluster", "show", "--config", str(cfg)])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 1
    err = " ".join(capfd.readouterr().err.split())
    assert "Traceback" not in err
    assert "'lots' is not a memory size" in err and "c.toml" in err


# --------------------------------------------------------------------------- run


def test_run_command_with_json_log(tmp_path: Path, slide: str, address: str) -> None:
    log = tmp_path / "events.jsonl"
    out = tmp_path / "out"
    res = runner.invoke(app, ["run", slide, "-o", str(out), "--scheduler", address, "--tile-size", "128",
                              "--json-log", str(log), "--statistics", "mean,median", "--statistics-sample", "0.5"])
    assert res.exit_code == 0, res.output
    from tiledseg.io import open_labels

    sample = dict(open_labels(slide, "cells").attrs["tiledseg"])["statistics"]["extra"]["sample"]
    assert sample["requested"] == 0.5 and sample["blocks"] == 2 and sample["fraction"] == 0.5
    assert "tiledseg run: 1 slide(s)" in res.output and "done" in res.output
    events = [json.loads(line) for line in log.read_text().splitlines()]
    tiles = [e for e in events if e["stage"] == "tiles" and e["kind"] == "advance"]
    assert sorted(e["tile"] for e in tiles) == [0, 1, 2, 3]  # one event per tile
    assert all({"time", "window", "cells", "seconds", "resumed", "slide"} <= set(e) for e in tiles)
    assert any(e["kind"] == "message" and e.get("dashboard") for e in events)
    assert (out / "s.cells.parquet").exists()
    # re-running resumes: everything reused
    res = runner.invoke(app, ["run", slide, "-o", str(out), "--scheduler", address, "--tile-size", "128",
                              "--statistics", "mean,median", "--statistics-sample", "0.5"])
    assert res.exit_code == 0 and "reused" in res.output


def test_run_command_exit_code_on_failed_slide(tmp_path: Path, slide: str, address: str) -> None:
    copy = write_synthetic_slide(str(tmp_path / "c.ome.zarr"), (256, 256), 4, seed=2, chunks=(1, 128, 128),
                                 truth=False)
    res = runner.invoke(app, ["run", str(copy), "-o", str(tmp_path / "o"), "--scheduler", address,
                              "--tile-size", "100"])  # not a multiple of the 128-px chunks
    assert res.exit_code == 1
    assert "failed" in res.output and "ParameterError" in res.output


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["run", "/nonexistent.mcd", "-o", "x"], SlideNotFoundError),
        (["run", "SLIDE", "-o", "OUT", "--quantiles", "1.5"], ParameterError),
        (["run", "SLIDE", "-o", "OUT", "--memory", "lots"], ClusterConfigError),
        (["run", "SLIDE", "-o", "OUT", "--json-log", "/nonexistent/dir/log.jsonl"], ParameterError),
        (["run", "SLIDE", "-o", "OUT", "--statistics-sample", "2"], ParameterError),
    ],
)
def test_run_command_errors(args: list[str], error: type[Exception], slide: str, tmp_path: Path) -> None:
    args = [slide if a == "SLIDE" else str(tmp_path / "out") if a == "OUT" else a for a in args]
    res = runner.invoke(app, args)
    assert isinstance(res.exception, error), res.output
    assert not (tmp_path / "out").exists()  # refused before any work


# --------------------------------------------------------------------------- demo


def test_demo_end_to_end(tmp_path: Path, address: str) -> None:
    res = runner.invoke(app, ["demo", "--out", str(tmp_path), "--size", "256", "--channels", "6",
                              "--tile-size", "256", "--cluster", address, "--no-report"])
    assert res.exit_code == 0, res.output
    assert "F1" in res.output
    f1 = float(res.output.split("F1")[1].split()[0])
    assert f1 > 0.7  # the classical backend on clean synthetic tissue
    assert "cell table" in res.output
    assert list(tmp_path.glob("synthetic-256px-6ch-seed0.ome.zarr"))
    # again: the slide and the results are reused
    res = runner.invoke(app, ["demo", "--out", str(tmp_path), "--size", "256", "--channels", "6",
                              "--tile-size", "256", "--cluster", address, "--no-report"])
    assert res.exit_code == 0 and "reusing the slide" in res.output and "reused" in res.output


def test_demo_with_a_deep_learning_backend_says_how_to_get_it(tmp_path: Path, address: str) -> None:
    res = runner.invoke(app, ["demo", "--out", str(tmp_path), "--size", "256", "--tile-size", "256",
                              "--backend", "mesmer", "--cluster", address])
    assert res.exit_code == 1
    text = " ".join(res.output.split())
    assert "docs/models.md" in text and "tiledseg[mesmer]" in text and "demo stopped" in text


def test_demo_rejects_bad_sizes(tmp_path: Path) -> None:
    res = runner.invoke(app, ["demo", "--out", str(tmp_path), "--size", "100"])
    assert isinstance(res.exception, ParameterError)
    res = runner.invoke(app, ["demo", "--out", str(tmp_path), "--tile-size", "300"])
    assert isinstance(res.exception, ParameterError)


# --------------------------------------------------------------------------- progress


def _events() -> list[ProgressEvent]:
    return [
        ProgressEvent("cluster", 0, 0, "message", {"message": "Dask dashboard: http://h:8787/status"}),
        ProgressEvent("tiles", 0, 3, "start", {"slide": "a"}),
        *[ProgressEvent("tiles", i, 3, "advance", {"slide": "a", "tile": i - 1}) for i in (1, 2, 3)],
        ProgressEvent("tiles", 3, 3, "end", {"slide": "a"}),
    ]


def test_progress_bars_on_a_terminal() -> None:
    buf = io.StringIO()
    term = Console(file=buf, force_terminal=True, width=120)
    with progress_reporter(console=term) as report:
        for e in _events():
            report(e)
    text = buf.getvalue()
    assert "Dask dashboard: http://h:8787/status" in text
    assert "tiles a" in text and "3/3" in text and "ETA" in text


def test_progress_quiet_off_a_terminal_and_json_lines(tmp_path: Path) -> None:
    buf = io.StringIO()
    pipe = Console(file=buf, force_terminal=False, width=120)
    log = tmp_path / "log.jsonl"
    with progress_reporter(log, console=pipe) as report:
        for e in _events():
            report(e)
    text = buf.getvalue()
    assert "dashboard" in text  # messages still reach the log of a batch job
    assert "3/3" not in text  # but no bars
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert len(lines) == len(_events())
    assert [x["tile"] for x in lines if x["kind"] == "advance"] == [0, 1, 2]
    assert lines[0]["time"].endswith("+00:00")
    buf2 = io.StringIO()
    with progress_reporter(console=Console(file=buf2, force_terminal=True), quiet=True) as report:
        for e in _events():
            report(e)
    assert buf2.getvalue() == ""
