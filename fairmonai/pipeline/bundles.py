"""Running another bundle's workflow in this process through the MONAI bundle API (``ConfigWorkflow``)."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fairmonai.errors import InputError

__all__ = ["config_keys", "config_files", "run_bundle", "split_overrides"]


def config_files(bundle: str | os.PathLike, configs: str | Sequence[str]) -> list[Path]:
    """``bundle/configs/<name>`` for every config name (a path that exists as given is kept)."""
    names = [configs] if isinstance(configs, str) else list(configs)
    out = []
    for name in names:
        path = Path(name) if Path(name).is_file() else Path(bundle) / "configs" / name
        if not path.is_file():
            raise InputError(f"bundle {bundle} has no config {name!r} (looked for {path})", path=path)
        out.append(path)
    return out


def config_keys(files: Sequence[str | os.PathLike]) -> set[str]:
    """Top-level keys of the merged configs (the settings a user can override)."""
    from monai.bundle import ConfigParser

    return set(ConfigParser.load_config_files([str(f) for f in files]))


def split_overrides(
    files: Sequence[str | os.PathLike],
    common: Mapping[str, Any],
    specific: Mapping[str, Any],
    what: str,
) -> dict[str, Any]:
    """Overrides for one config: ``common`` ones it has (others are for other configs), then ``specific`` ones,
    each of which it must have (an unknown key is a typo: :class:`InputError` naming the setting)."""
    keys = config_keys(files)
    out = {k: v for k, v in common.items() if k in keys}
    unknown = sorted(k for k in specific if k not in keys and "#" not in k)
    if unknown:
        raise InputError(
            f"{what}: {', '.join(map(repr, unknown))} {'is not a setting' if len(unknown) == 1 else 'are not settings'}"
            f" of {', '.join(str(Path(f).name) for f in files)}; its settings are {sorted(keys)}",
            path=files[-1],
            field=unknown[0],
        )
    out.update(specific)
    return out


def quiet_private_handlers(level: str | int, names: Sequence[str] = ("monai.handlers.StatsHandler",)) -> None:
    """Raise the handlers of every non-propagating logger, and of the loggers ``names``, to ``level``.

    MONAI's ``StatsHandler`` logs through the logger ``monai.handlers.StatsHandler``, which ``monai.apps.get_logger``
    gives a console handler of its own, out of reach of the root logger's handlers, made only when the bundle's
    ``run`` instantiates the trainer. ``get_logger`` adds no handler to a logger that already exists, so ``names``
    are made here first, each with one console handler at ``level``; the loggers keep INFO, so StatsHandler does
    not warn that it cannot log.
    """
    level = logging.getLevelName(str(level).upper()) if isinstance(level, str) else level
    for name in names:
        logger = logging.getLogger(name)
        if not logger.handlers:
            handler = logging.StreamHandler(sys.stdout)
            handler.setFormatter(logging.Formatter("%(asctime)s - %(levelname)s - %(message)s"))
            logger.addHandler(handler)
        logger.propagate = False
    for logger in list(logging.Logger.manager.loggerDict.values()):
        if isinstance(logger, logging.Logger) and not logger.propagate:
            for handler in logger.handlers:
                handler.setLevel(level)


def run_bundle(
    bundle: str | os.PathLike,
    configs: str | Sequence[str],
    overrides: Mapping[str, Any],
    *,
    before_run: Callable[[Any], None] | None = None,
    log_level: str | None = None,
) -> Any:
    """Run a bundle's ``initialize``, ``run`` and ``finalize`` in this process and return its ``ConfigWorkflow``.

    Args:
        bundle: the bundle folder (``bundle_root`` of its configs).
        configs: config file names under ``bundle/configs`` (later ones override earlier ones, as
            ``--config_file "['a.yaml','b.yaml']"`` does).
        overrides: top-level settings, as ``--key value`` on the command line.
        before_run: called with the workflow after ``initialize`` (e.g. to attach a handler to its trainer).
        log_level: root logging level after the bundle's ``logging.conf`` is applied (which sets INFO), e.g.
            ``WARNING`` to keep only the progress bars and warnings; None keeps the bundle's.
    """
    from monai.bundle import ConfigWorkflow

    files = config_files(bundle, configs)
    meta = Path(bundle) / "configs" / "metadata.json"
    values = {"bundle_root": str(Path(bundle).resolve()), **dict(overrides)}
    if log_level:  # MONAI's own bundle loggers announce every workflow (property files, logging.conf)
        for name in ("monai.bundle", "monai.bundle.workflows", "monai.bundle.config_parser"):
            logging.getLogger(name).setLevel(logging.WARNING)
    workflow = ConfigWorkflow(
        config_file=[str(f) for f in files],
        meta_file=str(meta) if meta.is_file() else None,
        workflow_type=None,
        **values,
    )
    if log_level:
        # logging.conf gave the root logger an INFO console handler; engines log through loggers of their own
        # level, which propagate to it: filter at the handlers
        level = logging.getLevelName(str(log_level).upper())
        root = logging.getLogger()
        root.setLevel(level)
        for handler in root.handlers:
            handler.setLevel(level)
    workflow.initialize()
    if log_level:
        quiet_private_handlers(level)
    try:
        if before_run is not None:
            before_run(workflow)
        workflow.run()
    finally:
        workflow.finalize()
    return workflow
