"""Atomic file output: a reader never sees a half-written file, and a crash leaves the old one intact."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "atomic_write"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed over ``path`` in one step.

    The temporary name keeps the final extension (``suffix``, default the target's full suffix such
    as ``.nii.gz``) so that writers that pick a format by extension (nibabel, matplotlib) still work.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(final.suffixes) if suffix is None else suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=f".tmp{suffix}", dir=final.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes owner-only files; outputs get the usual mode
    try:
        yield Path(tmp)
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", **open_kwargs) -> Iterator:
    """``open()`` replacement that writes to a temporary file and renames it into place on success."""
    with atomic_path(path) as tmp, open(tmp, mode, **open_kwargs) as handle:
        yield handle
