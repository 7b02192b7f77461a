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


def _gunzip_to_temp(archive: Path) -> tuple[Path, str]:
    """Decompress ``archive`` into a temp file beside it; (temp path, SHA-256 of the decompressed bytes)."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{archive.stem}.", suffix=".tmp", dir=archive.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, gzip.open(archive, "rb") as src:
            shutil.copyfileobj(src, out, 1 << 20)
        return tmp, file_digest(tmp, "sha256")
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        tmp.unlink(missing_ok=True)
        raise DataError(f"cannot unpack {archive} ({first_line(exc)}); it is not a complete gzip file: delete it "
                        "and fetch it again") from exc


def gunzip_verified(folder: Path, names: tuple[str, ...], md5s: dict[str, str], reference: str,
                    sha256s: dict[str, str] | None = None, sha_reference: str = "the SHA-256 list") -> dict[str, str]:
    """Unpack ``<name>.gz`` in ``folder`` for every name whose archive is present; return {name: sha256 of the
    unpacked file}.

    An archive is vouched for by its MD5 (``md5s``: archive file name -> MD5, from ``reference``, i.e.
    torchvision's list of the upstream .gz bytes) or, when that differs, by the SHA-256 of its decompressed
    content (``sha256s``: raw file name -> SHA-256, from ``sha_reference``). The second route accepts any
    faithful copy: a repacked gzip (Debian's ``dataset-fashion-mnist`` package) has other bytes and the same
    content. Every archive is decompressed to a temp file and checked before any is put in place, so a bad
    archive leaves the folder as it was. An unpacked file already in place must equal its archive's content
    (it is compared, never overwritten); a missing one is moved in atomically (rename).
    """
    sha256s = sha256s or {}
    staged: dict[str, tuple[Path, str]] = {}
    try:
        for name in names:
            archive = folder / f"{name}.gz"
            if not archive.exists():
                continue
            tmp, digest = _gunzip_to_temp(archive)
            staged[name] = (tmp, digest)
            md5 = file_digest(archive, "md5")
            if md5 == md5s.get(archive.name, "").lower() or digest == sha256s.get(name):
                continue
            listed = (f"{reference} lists {md5s[archive.name][:12]}…" if archive.name in md5s
                      else f"{reference} has no entry")
            shipped = (f"{sha_reference} lists {sha256s[name][:12]}…" if name in sha256s
                       else f"{sha_reference} has no entry for {name}")
            raise DataError(
                f"{archive} is not a verified copy: the MD5 of the .gz is {md5[:12]}… ({listed}) and the SHA-256 "
                f"of its decompressed content is {digest[:12]}… ({shipped}); the archive is corrupt or another "
                "release: delete it and fetch it again, or set data.checksums to a sha256sum file of the "
                "decompressed files you trust")
        vouched: dict[str, str] = {}
        for name, (tmp, digest) in staged.items():
            target = folder / name
            if target.exists():
                if file_digest(target, "sha256") != digest:
                    raise DataError(f"{target} differs from the content of its verified archive {name}.gz; "
                                    "delete it and run `ddmbench prepare` again")
            else:
                os.replace(tmp, target)
            vouched[name] = digest
        return vouched
    finally:
        for tmp, _ in staged.values():
            tmp.unlink(missing_ok=True)


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
