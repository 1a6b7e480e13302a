"""Entry-point plugin registry for fairness samplers, losses, metrics and filters.

A plugin is any callable (class or factory) exposed by an installed distribution under one of the
entry-point groups below. fairmonai's own built-ins are declared in its ``pyproject.toml`` the same
way, so a clinical team extends fairmonai by installing a package, never by editing it::

    [project.entry-points."fairmonai.samplers"]
    my_sampler = "my_package.samplers:MySampler"

MONAI bundle configs resolve ``_target_`` by dotted path and have no plugin mechanism of their own,
so :func:`create` is the bridge::

    sampler:
      _target_: fairmonai.registry.create
      kind: sampler
      name: sqrs
      groups: "@train_groups"
"""

from __future__ import annotations

import difflib
import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from typing import Any

__all__ = [
    "KINDS",
    "PluginError",
    "UnknownPluginError",
    "PluginImportError",
    "PluginConflictError",
    "PluginInfo",
    "available",
    "create",
    "get",
    "plugins",
    "refresh",
]

#: plugin kind -> entry-point group
KINDS: dict[str, str] = {
    "sampler": "fairmonai.samplers",
    "loss": "fairmonai.losses",
    "metric": "fairmonai.metrics",
    "filter": "fairmonai.filters",
}


class PluginError(Exception):
    """Base class of every registry error."""


class UnknownPluginError(PluginError, LookupError):
    """No installed plugin of that kind has that name (or the kind itself is unknown)."""


class PluginImportError(PluginError, ImportError):
    """A plugin is registered but its module or attribute cannot be imported."""


class PluginConflictError(PluginError):
    """Two installed distributions register the same name for the same kind."""


@dataclass(frozen=True)
class PluginInfo:
    """One registered plugin: where it comes from and what it points to."""

    kind: str
    name: str
    target: str  # "module:attribute", as written in the entry point
    package: str  # distribution name that registered it
    version: str

    def load(self) -> Callable[..., Any]:
        """Import the plugin object; import failures name the distribution that registered it."""
        module_name, _, attr = self.target.partition(":")
        try:
            obj: Any = __import__(module_name, fromlist=["_"])
            for part in filter(None, attr.split(".")):
                obj = getattr(obj, part)
        except Exception as exc:  # any failure inside a third-party import must name its package
            raise PluginImportError(
                f"{self.kind} plugin {self.name!r} from package {self.package} {self.version} "
                f"failed to import {self.target!r}: {type(exc).__name__}: {exc}"
            ) from exc
        return obj


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        close = difflib.get_close_matches(kind, KINDS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UnknownPluginError(f"unknown plugin kind {kind!r}; kinds are {sorted(KINDS)}.{hint}")
    return kind


@functools.cache
def _discover(kind: str) -> dict[str, PluginInfo]:
    found: dict[str, PluginInfo] = {}
    for dist in metadata.distributions():
        dist_name = dist.metadata["Name"] or "<unknown distribution>"
        for ep in dist.entry_points:
            if ep.group != KINDS[kind]:
                continue
            info = PluginInfo(kind, ep.name, ep.value, dist_name, dist.version)
            previous = found.get(ep.name)
            if previous is None:
                found[ep.name] = info
            elif (previous.package, previous.target) != (info.package, info.target):
                raise PluginConflictError(
                    f"{kind} plugin name {ep.name!r} is registered twice: by package {previous.package} "
                    f"{previous.version} ({previous.target}) and by package {info.package} {info.version} "
                    f"({info.target}); uninstall one of them or rename its entry point"
                )
            # the same distribution seen twice on sys.path (editable + build dir) is not a conflict
    return found


def refresh() -> None:
    """Forget discovered plugins, e.g. after ``pip install`` of a plugin package in a running process."""
    _discover.cache_clear()
    importlib.invalidate_caches()  # new .dist-info folders on sys.path become visible


def plugins(kind: str | None = None) -> list[PluginInfo]:
    """All installed plugins (of one kind, or of every kind), sorted by kind and name."""
    kinds = [_check_kind(kind)] if kind else list(KINDS)
    return [info for k in kinds for _, info in sorted(_discover(k).items())]


def available(kind: str) -> list[str]:
    """Names of the installed plugins of ``kind``."""
    return sorted(_discover(_check_kind(kind)))


def info(kind: str, name: str) -> PluginInfo:
    """Registration record of one plugin; unknown names list what is available and the closest match."""
    registered = _discover(_check_kind(kind))
    if name not in registered:
        names = sorted(registered)
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
        hint = f" Closest match: {close[0]!r}." if close else ""
        raise UnknownPluginError(
            f"no {kind} plugin named {name!r}. Available {kind} plugins: {', '.join(names) or '(none)'}.{hint}"
        )
    return registered[name]


def get(kind: str, name: str) -> Callable[..., Any]:
    """The plugin object (class or factory) registered as ``name`` for ``kind``."""
    return info(kind, name).load()


def create(kind: str, name: str, *args: Any, **kwargs: Any) -> Any:
    """Instantiate a plugin by name: ``create("sampler", "sqrs", groups=keys)``.

    Usable as a MONAI bundle ``_target_``; every extra argument goes to the plugin's constructor.
    """
    return get(kind, name)(*args, **kwargs)
