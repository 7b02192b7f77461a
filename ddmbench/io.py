"""Atomic writes (temp file + rename) and safe loading (``weights_only=True``)."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from ddmbench.errors import ArtifactError, DDMBenchError, first_line

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the body succeeds.

    A crash or exception inside the body leaves the previous file (or none) in place.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DDMBenchError(f"cannot create output folder {path.parent}: {exc.strerror}; "
                            "choose a writable location") from exc
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise DDMBenchError(f"cannot write in {path.parent}: {exc.strerror}; choose a writable location") from exc
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the permissions open() would
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())  # the bytes are on disk before the rename makes them visible
        os.replace(tmp, path)
    except OSError as exc:
        raise DDMBenchError(f"cannot write {path}: {exc.strerror or first_line(exc)}") from exc
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):  # tensors and numpy arrays and scalars
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_json(path: Path, what: str) -> Any:
    """Read a JSON output of an earlier stage; ``what`` names the stage that writes it."""
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path} is missing; run `{what}` first")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path} is not valid JSON ({exc.msg}); re-run `{what}`") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path} cannot be read ({first_line(exc)}); re-run `{what}`") from exc


def save_tensors(path: Path, obj: dict[str, Any]) -> None:
    """Save a dict of tensors / plain values with ``torch.save``, atomically."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_tensors(path: Path, what: str) -> dict[str, Any]:
    """Load a file written by :func:`save_tensors` with ``weights_only=True`` (no arbitrary unpickling)."""
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path} is missing; run `{what}` first")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt / unsafe files
        raise ArtifactError(f"{path} cannot be loaded safely ({first_line(exc, 160)}); re-run `{what}`") from exc
