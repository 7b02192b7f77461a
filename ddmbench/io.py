"""Atomic writes (temp file + rename) and safe loading (``weights_only=True``)."""

from __future__ import annotations

import glob
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


def _temp_prefix(path: Path) -> str:
    """Temps are ``.<name>.<pid>.<random>.tmp`` beside the target: hidden, never ``*.json``/``*.pt``, owner known."""
    return f".{path.name}.{os.getpid()}."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def remove_stale_temps(path: Path) -> list[Path]:
    """Delete temps of ``path`` left by writers that were killed (their pid is gone); return what was removed.

    A killed writer cannot clean up after itself, and a stale temp inside a folder that DVC hashes as a
    whole (``outputs/experts``, ``reports/samples``) would change that folder's hash. Temps of live
    processes are kept: they may still be renamed into place. (Pids are checked on this host only; ddmbench
    writes each output from one process, rank zero.)
    """
    removed = []
    for tmp in Path(path).parent.glob(f".{glob.escape(Path(path).name)}.*.tmp"):
        pid = tmp.name[len(Path(path).name) + 2:].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            try:
                tmp.unlink()
                removed.append(tmp)
            except OSError:
                pass
    return removed


def _make_temp(path: Path) -> Path:
    """Create ``path``'s folder and an empty temp beside ``path``; one-line DDMBenchError if either fails."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DDMBenchError(f"cannot create output folder {path.parent}: {exc.strerror}; "
                            "choose a writable location") from exc
    remove_stale_temps(path)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise DDMBenchError(f"cannot write in {path.parent}: {exc.strerror}; choose a writable location") from exc
    os.close(fd)
    return Path(tmp_name)


def ensure_writable(*paths: Path) -> None:
    """Fail before any work if an output's folder cannot be created or written (one-line DDMBenchError).

    Stages call this first, so a bad output location costs neither a training run nor a half-written
    set of outputs (the first file written, the second refused). Creates the folders; writes no file.
    """
    for path in paths:
        _make_temp(Path(path)).unlink()


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the body succeeds.

    A crash or exception inside the body leaves the previous file (or none) in place; a process killed
    mid-write leaves a stale temp, removed by the next write of the same path.
    """
    path = Path(path)
    tmp = _make_temp(path)
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
