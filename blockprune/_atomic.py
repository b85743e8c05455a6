"""Atomic file writes: a temporary file in the target folder, then a rename.

A failed or interrupted write leaves the previous file (or none) in place, never a
half-written one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["atomic_dir", "atomic_path", "write_text_atomic"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp"):
    """Yields a temporary path beside ``path``; on success it is renamed to ``path``.

    Args:
        path: the file to write.
        suffix: ending of the temporary name (writers that check extensions need their own).

    Raises:
        ValueError: ``path`` is a directory.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a directory; give a file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Writes ``text`` to ``path`` atomically (a temporary file, then a rename)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike):
    """Yields a temporary folder beside ``path``; on success every file in it moves into ``path``
    (created if needed), on failure it is removed with everything in it.

    So a job that writes several files writes all of them or none: files already in ``path``
    (a previous run's) stay as they were until the new ones replace them, and other files there
    are left alone.

    Raises:
        ValueError: ``path`` exists and is not a folder.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path} exists and is not a folder")
    created = next((p for p in reversed([path, *path.parents]) if not p.exists()), None)
    path.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-", dir=path.parent))
    try:
        yield work
        path.mkdir(exist_ok=True)
        for item in sorted(work.iterdir()):
            target = path / item.name
            if target.is_dir() and not item.is_dir():
                raise ValueError(f"{target} is a folder; cannot replace it with a file")
            if item.is_dir() and target.exists():
                shutil.rmtree(target) if target.is_dir() else target.unlink()
            os.replace(item, target)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        if created is not None and created != path:  # the parent folders made for it, if still empty
            for folder in [path.parent, *path.parent.parents]:
                with contextlib.suppress(OSError):
                    folder.rmdir()
                if folder == created:
                    break
        raise
    shutil.rmtree(work, ignore_errors=True)
