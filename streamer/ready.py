"""Ready pipelines: the TOML files shipped in the ``pipelines`` package, named by stem.

``streamer run audio_tagging`` runs ``pipelines/audio_tagging.toml`` from wherever the
package is installed (a wheel, ``pip install .``, or the repository itself). Resolution of a
``streamer run`` argument: an existing file is a path; otherwise a ready pipeline's name;
otherwise "pipeline file not found", listing the ready names.
"""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass
from pathlib import Path

from streamer.errors import InputError

#: The package that holds the ready pipelines' TOML files and their model factories.
PACKAGE = "pipelines"


@dataclass(frozen=True)
class ReadyPipeline:
    """One ready pipeline: its name (the file's stem), description and file."""

    name: str
    description: str
    path: Path

    def as_json(self) -> dict[str, str]:
        return {"name": self.name, "description": self.description, "path": str(self.path)}


def ready_pipelines() -> list[ReadyPipeline]:
    """The ready pipelines, sorted by name; none when the package is not importable."""
    try:
        folder = importlib.resources.files(PACKAGE)
    except ModuleNotFoundError:
        return []
    found = []
    for entry in folder.iterdir():
        if not entry.is_file() or not entry.name.endswith(".toml"):
            continue
        path = Path(str(entry))  # an installed package is a folder on disk, never a zip
        text = entry.read_text(encoding="utf-8")
        found.append(ReadyPipeline(path.stem, description(text), path))
    return sorted(found, key=lambda ready: ready.name)


def description(text: str) -> str:
    """The first comment line of a TOML file, without its ``#``; "" when it has none."""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            return stripped.lstrip("#").strip()
    return ""


def resolve_pipeline(argument: str) -> str:
    """The pipeline file ``argument`` names: itself when it is an existing file (or any
    existing path, which the loader then reports on), else the ready pipeline of that name.
    Raises :class:`InputError` listing the ready names when it is neither."""
    if Path(argument).is_file():
        return argument
    ready = ready_pipelines()
    for pipeline in ready:
        if pipeline.name == argument:
            return str(pipeline.path)
    if Path(argument).exists():
        return argument
    names = ", ".join(pipeline.name for pipeline in ready) or "none installed"
    raise InputError(f"{argument}: pipeline file not found (ready pipelines: {names})")


def format_ready(ready: list[ReadyPipeline]) -> str:
    """One line per ready pipeline: its name, padded, and its description."""
    if not ready:
        return "no ready pipelines (the pipelines package is not installed)"
    width = max(len(pipeline.name) for pipeline in ready)
    return "\n".join(f"{p.name:<{width}}  {p.description}".rstrip() for p in ready)
