"""Atomic output: a reader never sees a half-written file or folder, and a crash leaves the old one intact.

Files: :func:`atomic_write` / :func:`atomic_path` write beside the target and rename over it.
Folders (a phantom cohort, an audit): :func:`atomic_directory` builds the whole folder beside the
target and swaps it in; :func:`check_output_dir` refuses to replace a folder that is not the kind
of output about to be written (a cohort folder given as an audit's ``--out``) unless forced.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from fairmonai.errors import FairMonaiError

__all__ = ["OutputExistsError", "atomic_directory", "atomic_path", "atomic_write", "check_output_dir"]


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
    """``open()`` replacement that writes to a temporary file and renames it into place on success.

    The data is flushed to disk (``fsync``) before the rename, so a crash or power loss right after
    leaves either the old file or the complete new one, never an empty file under the final name.
    """
    with atomic_path(path) as tmp:
        with open(tmp, mode, **open_kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())


class OutputExistsError(FairMonaiError, FileExistsError):
    """An output folder already holds something that writing would destroy; pass ``force`` to replace it."""


def _owner_tag() -> str:
    # host and pid in the temporary names let a later run tell a dead writer's leftovers from a live writer's
    host = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:40] or "host"
    return f"{host}-{os.getpid()}"


def _dead_leftover(name: str, target: str, kind: str) -> bool:
    """Whether ``name`` is a ``.<target>.<host>-<pid>.<random>.<kind>`` folder of a gone process of this host."""
    match = re.fullmatch(rf"\.{re.escape(target)}\.(.+)-(\d+)\.[^.]+\.{kind}", name)
    if not match or match.group(1) != _owner_tag().rsplit("-", 1)[0]:
        return False
    pid = int(match.group(2))
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _recover(final: Path) -> None:
    """Clean up after a writer of ``final`` that was killed: restore a folder it had moved aside, drop its temp."""
    parent = final.parent
    if not parent.is_dir():
        return
    for entry in sorted(parent.iterdir()):
        if _dead_leftover(entry.name, final.name, "old"):
            kept = entry / final.name
            if kept.exists() and not (final.exists() or final.is_symlink()):
                # killed between moving the old folder aside and moving the new one in: the old one is complete
                os.replace(kept, final)
            shutil.rmtree(entry, ignore_errors=True)
        elif _dead_leftover(entry.name, final.name, "tmp"):
            shutil.rmtree(entry, ignore_errors=True)


def _fsync_tree(root: Path) -> None:
    """Flush every file and folder under ``root`` to disk, so the rename never publishes unwritten data."""
    for folder, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            if os.path.islink(path):
                continue
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(folder))


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. platforms without directory file descriptors
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, *, fsync: bool = True) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; on success it replaces ``path`` whole.

    Write everything into the yielded folder. When the block ends without an exception, every file
    is fsync'd, an existing ``path`` is renamed aside, the new folder is renamed to ``path`` and only
    then the old one is removed. If the block raises (or the process is killed), ``path`` is left
    exactly as it was; the next :func:`atomic_directory` on the same ``path`` removes the temporary
    folders of writers that died, and restores an old folder that a writer killed between its two
    renames had moved aside.

    Paths written inside the folder should be relative (a manifest's paths are), as the folder moves.
    Decide *whether* to replace ``path`` before (see :func:`check_output_dir`): this function replaces.
    """
    final = Path(path).resolve()  # through a symlink: the folder it names is replaced, the link kept
    final.parent.mkdir(parents=True, exist_ok=True)
    _recover(final)
    tag = _owner_tag()
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.{tag}.", suffix=".tmp", dir=final.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes an owner-only folder; outputs get the usual mode
    try:
        yield tmp
        if fsync:
            _fsync_tree(tmp)
        aside = None
        if final.exists() or final.is_symlink():
            aside = Path(tempfile.mkdtemp(prefix=f".{final.name}.{tag}.", suffix=".old", dir=final.parent))
            os.replace(final, aside / final.name)
        try:
            os.replace(tmp, final)
        except BaseException:
            if aside is not None:
                os.replace(aside / final.name, final)
            raise
        if fsync:
            _fsync_dir(final.parent)
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_output_dir(
    path: str | os.PathLike,
    *,
    marker: str,
    what: str,
    force: bool = False,
    differs: Callable[[Path], str | None] | None = None,
) -> bool:
    """Decide whether writing ``what`` to folder ``path`` may replace what is there.

    Args:
        path: the output folder.
        marker: file name that marks a folder as this kind of output (``phantom.json``, ``audit.json``).
        what: words for the output in messages (``"a fairmonai phantom cohort"``).
        force: replace anything.
        differs: given the existing folder (which has ``marker``), None when it already holds what
            is about to be written, else what differs (for the message); None: any folder with
            ``marker`` may be replaced.

    Returns:
        True when ``path`` already holds the same output (``differs`` found nothing): nothing needs writing.

    Raises:
        OutputExistsError: ``path`` is a file, a non-empty folder without ``marker``, or (``differs``
            given) a different output; unless ``force``.
    """
    folder = Path(path)
    if not (folder.exists() or folder.is_symlink()):
        return False
    if not folder.is_dir():
        if force:
            return False
        raise OutputExistsError(f"{folder} is a file, not a folder for {what}; remove it or pass --force")
    if not (folder / marker).is_file():
        if force or not any(folder.iterdir()):
            return False
        raise OutputExistsError(
            f"{folder} is not empty and holds no {marker}, so it is not {what}; writing would replace it "
            "whole: choose another folder or pass --force"
        )
    if differs is None:
        return False
    difference = differs(folder)
    if difference is None:
        return True
    if force:
        return False
    raise OutputExistsError(
        f"{folder} already holds {what} written with other settings ({difference}); "
        "choose another folder or pass --force to replace it"
    )
