"""Backend defaults and the commented TOML parameter file (``tiledseg init``).

The counterpart of ``steinbock segment cellprofiler prepare``: a text file with every parameter
of a backend, its default value and a one-line explanation, which the user edits and hands to
``tiledseg segment SLIDE --config FILE`` (or ``tiledseg.segment(slide, config=FILE)``).

Format::

    [segment]          # options of tiledseg.segment(): backend, tile_size, halo_um, ...
    backend = "watershed"

    [backend]          # constructor parameters of that backend, lengths in µm
    smooth_um = 1.0

Defaults are read from the backend class' constructor signature and the explanations from its
numpydoc ``Parameters`` section, so any registered backend -- a lab's plugin included -- gets a
parameter file without extra code. Parameters whose default is ``None`` ("decided at run
time", e.g. channel roles from the panel) cannot be written in TOML and appear commented out.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tiledseg.errors import OutputExistsError, ParameterError

__all__ = [
    "backend_defaults",
    "parameter_docs",
    "parameter_file_text",
    "write_parameter_file",
]

#: Commented ``[segment]`` options (name, example value, explanation).
SEGMENT_OPTIONS: tuple[tuple[str, Any, str], ...] = (
    ("tile_size", 1024, "core tile edge in pixels, a multiple of the slide's chunks (default: the backend's)"),
    ("halo_um", 40.0, "context each side of a tile in µm (default: the backend's halo)"),
    ("labels_name", "cells", "label image written under <slide>/labels/"),
    ("overwrite", False, "replace an existing label image"),
    ("statistics_sample", "auto", "slide statistics from: auto (all pixels up to 16 Mpx, else max(1/8, 16 Mpx) of the chunks), full, or a fraction"),
)

#: Examples shown for parameters that default to None.
EXAMPLES: dict[str, Any] = {
    "nuclear": ["DNA1", "DNA2"],
    "membrane": ["CD45", "E-cadherin"],
    "labels": "nuclei",
    "threshold": 0.2,
    "nucleus_threshold": 0.5,
    "hot_pixel_threshold": 50.0,
    "min_nucleus_diameter_um": 3.2,
    "nuclear_params": {"nuclear": ["DNA1"]},
}


def _backend_class(name: str) -> type[Any]:
    from tiledseg.segment._registry import _load_class

    return _load_class(name)


def backend_defaults(name: str) -> dict[str, Any]:
    """Constructor parameters of backend ``name`` and their defaults (``None`` = decided at run time).

    Parameters
    ----------
    name : str
        Registered backend name.

    Returns
    -------
    dict
        In constructor order; parameters without a default map to ``inspect.Parameter.empty``.
    """
    cls = _backend_class(name)
    out: dict[str, Any] = {}
    for pname, param in inspect.signature(cls).parameters.items():
        if param.kind in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL):
            continue
        default = param.default
        if isinstance(default, tuple):
            default = list(default)
        out[pname] = default
    return out


def parameter_docs(cls: type[Any]) -> dict[str, str]:
    """One-line explanations of the parameters in ``cls``' numpydoc ``Parameters`` section."""
    doc = inspect.getdoc(cls) or ""
    match = re.search(r"^Parameters\n-{3,}\n(.*?)(?:^\S[^\n]*\n-{3,}\n|\Z)", doc, flags=re.MULTILINE | re.DOTALL)
    if match is None:
        return {}
    docs: dict[str, str] = {}
    names: list[str] = []
    lines: list[str] = []
    for line in match.group(1).splitlines():
        if line and not line.startswith(" "):
            for n in names:
                docs[n] = " ".join(lines)
            names = [n.strip() for n in line.split(":")[0].split(",")]
            lines = []
        elif line.strip():
            lines.append(line.strip())
    for n in names:
        docs[n] = " ".join(lines)
    return docs


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ParameterError(f"cannot write the non-finite number {value} to TOML")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise ParameterError(f"cannot write {value!r} ({type(value).__name__}) to TOML")


def _comment(text: str, width: int = 96) -> list[str]:
    words = text.split()
    lines: list[str] = []
    current = "#"
    for word in words:
        if len(current) + 1 + len(word) > width and current != "#":
            lines.append(current)
            current = "#"
        current += " " + word
    if current != "#":
        lines.append(current)
    return lines


def parameter_file_text(backend: str = "watershed", *, version: str | None = None) -> str:
    """The commented TOML parameter file of ``backend`` with its defaults.

    Parameters
    ----------
    backend : str
        Registered backend name.
    version : str, optional
        tiledseg version written in the header.

    Returns
    -------
    str
        TOML text; ``tomllib.loads`` of it gives ``{"segment": {"backend": backend}, "backend":
        {...defaults that are not None...}}``.

    Raises
    ------
    BackendNotFoundError
        Unknown backend (the message lists the installed ones).
    """
    cls = _backend_class(backend)
    defaults = backend_defaults(backend)
    docs = parameter_docs(cls)
    header = f"tiledseg {version}" if version else "tiledseg"
    out = [
        f"# tiledseg parameter file for the {backend!r} backend, written by `tiledseg init` ({header}).",
        "# Use it with:  tiledseg segment SLIDE --config THIS_FILE",
        "#          or:  tiledseg.segment(slide, config=THIS_FILE)",
        "# Lengths are in µm and converted with the slide's pixel size. Edit values in place;",
        "# commented-out parameters are decided at run time unless you uncomment and set them.",
        "",
        "[segment]",
        f"backend = {_toml_value(backend)}",
    ]
    for name, example, text in SEGMENT_OPTIONS:
        out.append(f"# {name} = {_toml_value(example)}  # {text}")
    out += ["", "[backend]"]
    summary = (inspect.getdoc(cls) or "").split("\n", 1)[0]
    if summary:
        out.extend(_comment(summary))
    for name, default in defaults.items():
        out.append("")
        if docs.get(name):
            out.extend(_comment(f"{name}: {docs[name]}"))
        if default is inspect.Parameter.empty:
            example = EXAMPLES.get(name, "")
            out.append(f"{name} = {_toml_value(example)}  # required")
        elif default is None:
            example = EXAMPLES.get(name)
            shown = _toml_value(example) if example is not None else "..."
            out.append(f"# {name} = {shown}  # default: decided at run time")
        else:
            out.append(f"{name} = {_toml_value(default)}")
    return "\n".join(out) + "\n"


def write_parameter_file(
    path: str | os.PathLike[str] = "tiledseg.toml",
    *,
    backend: str = "watershed",
    overwrite: bool = False,
) -> Path:
    """Write the commented parameter file of ``backend`` to ``path``.

    Parameters
    ----------
    path : str or path-like
        Output file (default ``tiledseg.toml``).
    backend : str
        Registered backend name.
    overwrite : bool
        Replace an existing file.

    Returns
    -------
    Path
        The file written.

    Raises
    ------
    OutputExistsError
        ``path`` exists and ``overwrite`` is False.
    BackendNotFoundError
        Unknown backend.

    Examples
    --------
    >>> import tempfile, tomllib, pathlib
    >>> p = write_parameter_file(pathlib.Path(tempfile.mkdtemp()) / "ws.toml")
    >>> tomllib.loads(p.read_text())["segment"]["backend"]
    'watershed'
    """
    from tiledseg import __version__

    p = Path(path)
    if p.is_dir():
        p = p / "tiledseg.toml"
    if p.exists() and not overwrite:
        raise OutputExistsError(f"parameter file {str(p)!r} exists; pass overwrite=True (--overwrite) to replace it")
    text = parameter_file_text(backend, version=__version__)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(p)
    return p
