"""Checksums of raw files and archives: SHA-256 lists, torchvision's own MD5 lists, gzip and tar unpacking.

torchvision ships an MD5 for every archive it downloads (``MNIST.resources``, ``FashionMNIST.resources``:
the ``.gz`` files; ``CIFAR10.train_list`` / ``test_list``: the pickled batches; ``CIFAR10.tgz_md5``: the
tarball). Those lists come with the installed library, so they are a trusted reference that needs no
list of our own; an archive is unpacked only after its MD5 matched, and a file whose check fails is never
used (the error names it).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

from ddmbench.errors import DataError, first_line


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of a file (``sha256`` or ``md5``), read in 1 MiB chunks."""
    h = hashlib.new(algorithm, usedforsecurity=False) if algorithm == "md5" else hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_md5(path: Path, expected: str, reference: str) -> None:
    """DataError naming ``path`` unless its MD5 is ``expected`` (``reference`` says where that MD5 comes from)."""
    got = file_digest(path, "md5")
    if got != expected.lower():
        raise DataError(f"{path}: MD5 mismatch against {reference} (got {got[:12]}…, expected {expected[:12]}…); "
                        "the file is truncated or tampered with: delete it and run `ddmbench prepare` again")


def gunzip_verified(folder: Path, names: tuple[str, ...], md5s: dict[str, str], reference: str) -> dict[str, str]:
    """Unpack ``<name>.gz`` in ``folder`` for every name whose archive is present, after checking every archive's
    MD5 (``md5s`` maps an archive's file name to its MD5). Return {name: sha256 of the unpacked file}.

    All archives are checked before any is unpacked, so a bad archive leaves the folder as it was. An
    unpacked file already in place must equal its archive's content (it is compared, never overwritten);
    a missing one is written atomically (temp file + rename).
    """
    present = [n for n in names if (folder / f"{n}.gz").exists() and f"{n}.gz" in md5s]
    for name in present:
        check_md5(folder / f"{name}.gz", md5s[f"{name}.gz"], reference)
    vouched: dict[str, str] = {}
    for name in present:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out, gzip.open(folder / f"{name}.gz", "rb") as src:
                shutil.copyfileobj(src, out, 1 << 20)
            digest = file_digest(tmp, "sha256")
            target = folder / name
            if target.exists():
                if file_digest(target, "sha256") != digest:
                    raise DataError(f"{target} differs from the content of its verified archive {name}.gz; "
                                    "delete it and run `ddmbench prepare` again")
            else:
                os.replace(tmp, target)
            vouched[name] = digest
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            raise DataError(f"cannot unpack {folder / name}.gz ({first_line(exc)}); delete it and run "
                            "`ddmbench prepare` again") from exc
        finally:
            if tmp.exists():
                tmp.unlink()
    return vouched


def extract_members(archive: Path, md5: str, reference: str, members: dict[str, str], dest: Path) -> None:
    """Check ``archive`` (a tar.gz) against ``md5``, then extract ``members`` (path inside -> file name) into
    ``dest`` (flat). DataError naming the archive if it fails its MD5, cannot be read or lacks a member."""
    check_md5(archive, md5, reference)
    try:
        with tarfile.open(archive) as tar:
            for inside, name in members.items():
                src = tar.extractfile(tar.getmember(inside))
                if src is None:
                    raise KeyError(inside)
                with src, open(dest / name, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
    except (OSError, tarfile.TarError, KeyError, EOFError) as exc:
        raise DataError(f"cannot extract {archive} ({first_line(exc)}); delete it and run `ddmbench prepare` "
                        "again") from exc
