"""Helpers every bundle config uses: where the bundle is, flags given on the command line, and the
error a user reads last when a run stops on bad input (:func:`install_error_hook`)."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

__all__ = ["bundle_root", "as_bool", "install_error_hook", "located_error_line"]


def bundle_root(default: str | os.PathLike | None = None) -> str:
    """Root folder of the bundle being run, so that a bundle runs from any working directory.

    ``monai.bundle run`` (``ConfigWorkflow``) knows where its config files are (``config_root_path``)
    but gives the config no ``bundle_root``; model-zoo bundles default to ``"."``, which only works from
    the bundle folder. Looked up in order: the ``ConfigWorkflow`` on the call stack (the parent of its
    ``configs/`` folder); ``--config_file`` on the command line; ``default``; the working directory.
    ``--bundle_root DIR`` on the command line overrides the whole lookup.
    """
    frame = sys._getframe(1)
    while frame is not None:
        owner = frame.f_locals.get("self")
        # check the type before touching attributes: ConfigParser.__getattr__ looks names up as config ids
        if type(owner).__name__.endswith("Workflow"):
            root = vars(owner).get("config_root_path")
            if root is not None:
                root = Path(root).resolve()
                return str(root.parent if root.name == "configs" else root)
        frame = frame.f_back
    argv = sys.argv
    for i, arg in enumerate(argv):
        value = argv[i + 1] if arg == "--config_file" and i + 1 < len(argv) else None
        if arg.startswith("--config_file="):
            value = arg.split("=", 1)[1]
        if value:
            first = value.strip().strip("[]").split(",")[0].strip().strip("'\"")
            folder = Path(first).resolve().parent
            return str(folder.parent if folder.name == "configs" else folder)
    return str(Path(default).resolve() if default is not None else Path.cwd())


def as_bool(value: Any) -> bool:
    """A flag from a config value: ``monai.bundle run --resume false`` passes the *string* ``"false"``."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("true", "yes", "on", "1"):
            return True
        if text in ("false", "no", "off", "0", "", "none", "null"):
            return False
        raise ValueError(f"{value!r} is not a boolean (use true or false)")
    return bool(value)


#: how a traceback printed as text (a DataLoader worker's, re-raised in the main process) shows an InputError
_WORKER_INPUT_ERROR = re.compile(r"^(?:\w+\.)*(?:InputError|MissingWeightsError): (.+)$", re.MULTILINE)


def located_error_line(exc: BaseException) -> str | None:
    """``fairmonai: error: <message>`` for the located :class:`~fairmonai.errors.InputError` under ``exc``
    (MONAI wraps it in ``Failed to evaluate ConfigExpression`` and ``applying transform`` errors), else None.

    A DataLoader worker (``num_workers > 0``) sends its exception to the main process as traceback text,
    re-raised as a new exception of the outermost type: the located message is then read from that text.
    """
    from fairmonai.errors import InputError, located_cause

    cause = located_cause(exc)
    if isinstance(cause, InputError):
        return f"fairmonai: error: {cause}"
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        found = _WORKER_INPUT_ERROR.findall(str(current))
        if found:
            return f"fairmonai: error: {found[-1]}"
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _excepthook(exc_type: type[BaseException], exc: BaseException, tb: Any) -> None:
    _excepthook.previous(exc_type, exc, tb)  # type: ignore[attr-defined]
    line = located_error_line(exc)
    if line is not None:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()


def install_error_hook() -> None:
    """Print, after the usual traceback of an uncaught exception, the project's own located message last.

    ``python -m monai.bundle run`` is MONAI's entry point, so fairmonai cannot catch the error itself;
    this ``sys.excepthook`` (installed when :mod:`fairmonai.engines` is imported, i.e. by every bundle
    config) keeps the full traceback and adds ``fairmonai: error: <file>, row N, field 'x': ...`` as the
    last line. Installing it again does nothing.
    """
    if sys.excepthook is _excepthook:
        return
    _excepthook.previous = sys.excepthook  # type: ignore[attr-defined]
    sys.excepthook = _excepthook
