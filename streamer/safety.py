"""Output paths never destroy an input or another output of the same run.

Before anything is opened for writing, every output path (``--out``, ``--metrics``, each
sink's ``path``) is compared with the run's inputs (the source file, the files of a source
recording, the model or weights file, the factory's module, the pipeline file) and with
the other outputs, after resolving symlinks and comparing inodes (hard links).
"""

from __future__ import annotations

import importlib.util
import os
import stat
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from streamer.errors import InputError

#: (what it is, path): e.g. ("the source file", Path("talk.wav")).
Named = tuple[str, Path]


def source_inputs(uri: str) -> list[Named]:
    """The files a source URI reads: a media file, or every file of a recording folder."""
    from streamer.sources import uri_path

    path = uri_path(uri)
    if path is None:
        return []
    if path.is_dir():
        return [(f"a file of the source recording {path}", p) for p in _files(path)]
    return [("the source file", path)] if path.exists() else []


def factory_input(factory: str | None) -> list[Named]:
    """The Python file of a ``module:function`` factory, when it can be found."""
    if not factory or ":" not in factory:
        return []
    add_cwd_to_path()
    try:
        spec = importlib.util.find_spec(factory.partition(":")[0])
    except (ImportError, ValueError):
        return []
    origin = getattr(spec, "origin", None)
    if spec is None or not origin or not os.path.isfile(origin):
        return []
    return [("the model factory's module", Path(origin))]


def add_cwd_to_path() -> None:
    """Factories name modules of the project at hand: import them from the current folder."""
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.insert(0, cwd)


def check_outputs(inputs: Sequence[Named], outputs: Sequence[Named]) -> None:
    """Raise :class:`InputError` (one line) if an output would overwrite an input, or two
    outputs would write the same file. Touches nothing."""
    seen: list[Named] = []
    for out_name, out_path in outputs:
        for in_name, in_path in inputs:
            if _same(out_path, in_path):
                raise InputError(
                    f"{out_name}: {out_path} is {in_name} ({in_path}), an input of this run;"
                    " it would be overwritten: choose another output path"
                )
        if _shareable(out_path):
            continue
        for other_name, other_path in seen:
            if _same(out_path, other_path):
                raise InputError(
                    f"{out_name}: {out_path} is also {other_name} ({other_path}); two outputs"
                    " would overwrite each other: choose another path"
                )
        seen.append((out_name, out_path))


def check_writable(path: Path, name: str | None = None) -> None:
    """Refuse, without touching anything, an output path that cannot be written."""
    where = f"{name}: {path}" if name else str(path)
    parent = path.parent
    if not parent.is_dir():
        raise InputError(f"{where}: cannot write output: folder '{parent}' does not exist")
    if path.is_dir():
        raise InputError(f"{where}: cannot write output: it is a folder")
    target = path if path.exists() else parent
    # the ids the process writes with (a set-uid tool, or a test dropping root's rights)
    effective = os.access in os.supports_effective_ids
    if not os.access(target, os.W_OK, effective_ids=effective):
        raise InputError(f"{where}: cannot write output: permission denied")


def _same(a: Path, b: Path) -> bool:
    try:
        if os.path.realpath(a) == os.path.realpath(b):
            return True
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _shareable(path: Path) -> bool:
    """Character devices (``/dev/null``, a terminal) may take several outputs."""
    try:
        return stat.S_ISCHR(os.stat(path).st_mode)
    except OSError:
        return False


def _files(folder: Path) -> Iterable[Path]:
    for root, _dirs, names in os.walk(folder):
        for name in names:
            yield Path(root) / name
