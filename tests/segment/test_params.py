"""Backend defaults, the commented TOML parameter file and ``tiledseg init``."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tiledseg.errors import BackendNotFoundError, OutputExistsError
from tiledseg.segment import get_backend
from tiledseg.segment._params import (
    backend_defaults,
    parameter_docs,
    parameter_file_text,
    write_parameter_file,
)
from tiledseg.segment.watershed import WatershedBackend


@pytest.mark.parametrize("name", ["watershed", "probabilities", "expand"])
def test_parameter_file_round_trips_to_the_defaults(name: str) -> None:
    data = tomllib.loads(parameter_file_text(name))
    assert data["segment"] == {"backend": name}
    defaults = {k: v for k, v in backend_defaults(name).items() if v is not None}
    assert data["backend"] == defaults
    # the file builds the same backend as no parameters at all
    assert get_backend(name, **data["backend"]).params() == get_backend(name).params()


def test_every_parameter_is_explained() -> None:
    text = parameter_file_text("watershed")
    docs = parameter_docs(WatershedBackend)
    for name in backend_defaults("watershed"):
        assert docs.get(name), f"{name} has no explanation in the docstring"
        assert f"# {name}: " in text
    # None defaults are shown commented out with an example
    assert '# nuclear = ["DNA1", "DNA2"]  # default: decided at run time' in text
    assert "\nsmooth_um = 1.0\n" in text


def test_write_parameter_file(tmp_path: Path) -> None:
    path = write_parameter_file(tmp_path / "sub" / "ws.toml", backend="probabilities")
    assert tomllib.loads(path.read_text())["segment"]["backend"] == "probabilities"
    with pytest.raises(OutputExistsError, match="ws.toml"):
        write_parameter_file(path)
    write_parameter_file(path, backend="expand", overwrite=True)
    assert tomllib.loads(path.read_text())["segment"]["backend"] == "expand"
    assert write_parameter_file(tmp_path).name == "tiledseg.toml"
    with pytest.raises(BackendNotFoundError, match="installed: .*watershed"):
        write_parameter_file(tmp_path / "x.toml", backend="nope")


def test_cli_init(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tiledseg.cli import app

    runner = CliRunner()
    monkeypatch.chdir(tmp_path)
    out = runner.invoke(app, ["init"])
    assert out.exit_code == 0, out.output
    assert (tmp_path / "tiledseg.toml").is_file() and "--config" in out.output
    again = runner.invoke(app, ["init"])
    assert again.exit_code != 0 and isinstance(again.exception, OutputExistsError)
    out = runner.invoke(app, ["init", "p.toml", "--backend", "expand"])
    assert out.exit_code == 0, out.output
    assert tomllib.loads((tmp_path / "p.toml").read_text())["backend"]["distance_um"] == 4.0
    printed = runner.invoke(app, ["init", "--stdout", "-b", "probabilities"])
    assert printed.exit_code == 0
    assert tomllib.loads(printed.output)["segment"]["backend"] == "probabilities"


def test_edited_file_is_read_by_segment_config(tmp_path: Path) -> None:
    from tiledseg.api._segment import load_segment_config

    path = write_parameter_file(tmp_path / "ws.toml")
    text = path.read_text().replace("max_growth_um = 4.0", "max_growth_um = 3.0")
    text = text.replace('# nuclear = ["DNA1", "DNA2"]', 'nuclear = ["DNA1", "DNA2"]')
    path.write_text(text)
    options, params = load_segment_config(path)
    assert options == {"backend": "watershed"}
    backend = get_backend(options["backend"], **params)
    assert backend.max_growth_um == 3.0 and backend.nuclear == ("DNA1", "DNA2")


@pytest.mark.parametrize(
    ("backend", "parameter"),
    [("watershed", "threshold"), ("threshold", "threshold"), ("probabilities", "nucleus_threshold")],
)
@pytest.mark.parametrize("value", [1.5, -0.1, float("nan"), "high"])
def test_thresholds_outside_the_unit_interval_are_named(backend: str, parameter: str, value: object) -> None:
    from tiledseg.errors import ParameterError
    from tiledseg.segment._registry import _load_class

    cls = _load_class(backend)
    with pytest.raises(ParameterError, match=f"`{parameter}` must lie in \\[0, 1\\]"):
        cls(**{parameter: value})
    assert getattr(cls(**{parameter: "0.25"}), parameter) == 0.25  # numbers as typed on a command line
