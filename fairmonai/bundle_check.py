"""Check a MONAI bundle the way the MONAI model zoo does, plus fairmonai's own plugin checks.

``verify_bundle(path)`` returns a :class:`BundleReport` listing every problem found, rather than stopping
at the first, so that one run tells a bundle author everything to fix:

- ``LICENSE``, ``configs/metadata.json`` (valid JSON, required keys with their types, the current version
  in the changelog, every ``network_data_format`` entry complete), an inference or train config, and
  ``docs/README.md`` (a warning if missing);
- every config under ``configs/`` parses with :class:`monai.bundle.ConfigParser`, and every literal
  ``_target_`` resolves the way ``monai.bundle`` resolves it (MONAI short names, then dotted paths with the
  bundle root on ``sys.path`` so that ``scripts.*`` targets resolve);
- every plugin that a config loads through ``fairmonai.registry.create``/``get`` is installed;
- model files whose checksum the metadata records match it; every other model file under ``models/``
  (``*.pt``, ``*.pth``, ``*.ckpt``) is loaded with ``torch.load(weights_only=True)``, so a truncated or
  corrupt file fails; a missing ``models/model.pt`` is a warning, because models are produced by training
  and never committed.

Resolving a ``_target_`` IMPORTS the module it names, exactly as ``monai.bundle run`` would: for a bundle's
own ``scripts.*`` targets that runs the bundle's code (and any module-level code of the packages named).
Check only bundles you trust this way. ``static=True`` (``fairmonai verify-bundle --static``) imports
nothing from the bundle or from the packages its targets name: a dotted ``_target_`` is checked by finding
its module file on disk (the bundle root, then installed packages) and reading, not running, the module's
source for the name; plugins are looked up in the installed entry points without loading them; MONAI
short names are looked up in MONAI (an installed, trusted package). Loading model files with
``weights_only=True`` runs no pickled code and happens in both modes.

MONAI's ``verify_metadata`` validates against a JSON schema that it downloads from the URL in the
metadata's ``schema`` key. Nothing here downloads anything: the schema is checked only against a local
copy (``schema_file=`` or ``FAIRMONAI_BUNDLE_SCHEMA``) when ``jsonschema`` is installed, and otherwise the
report carries a note saying it was skipped.

Command line (wired as ``fairmonai verify-bundle PATH``; also ``python -m fairmonai.bundle_check PATH``)::

    WARNING models/model.pt: not found; models are produced by training and are not committed
    ERROR configs/train.yaml: no sampler plugin named 'sqr'. Available sampler plugins: cbrs, sqrs. ...
    FAILED: 1 error(s) in bundles/downstream_classifier

``fairmonai verify-bundle --static PATH`` checks an untrusted bundle without importing its code.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import hashlib
import importlib.util
import json
import os
import re
import sys
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from pydoc import ErrorDuringImport, locate
from typing import Any

from fairmonai import registry

__all__ = [
    "ERROR",
    "WARNING",
    "NOTE",
    "BundleProblem",
    "BundleReport",
    "verify_bundle",
    "check_config",
    "add_arguments",
    "run_cli",
    "main",
]

ERROR = "error"
WARNING = "warning"
NOTE = "note"  # information that is neither pass nor fail (e.g. a check that was skipped)

METADATA_FILE = "configs/metadata.json"
MODEL_FILE = "models/model.pt"
#: files under models/ that are torch checkpoints, loaded with weights_only=True when no checksum covers them
MODEL_SUFFIXES = (".pt", ".pth", ".ckpt")
CONFIG_SUFFIXES = (".json", ".yaml", ".yml")
SCHEMA_ENV = "FAIRMONAI_BUNDLE_SCHEMA"

#: required top-level metadata keys and their JSON types (MONAI bundle specification + model-zoo habits)
REQUIRED_METADATA: dict[str, type] = {
    "version": str,
    "changelog": dict,
    "monai_version": str,
    "pytorch_version": str,
    "numpy_version": str,
    "required_packages_version": dict,
    "task": str,
    "description": str,
    "authors": str,
    "copyright": str,
    "network_data_format": dict,
    "intended_use": str,
    "references": list,
}

#: keys every entry of network_data_format.inputs / .outputs must have
REQUIRED_TENSOR_KEYS: dict[str, type] = {
    "type": str,
    "format": str,
    "num_channels": int,
    "spatial_shape": list,
    "dtype": str,
    "value_range": list,
    "is_patch_data": bool,
    "channel_def": dict,
}

#: ``_target_`` values through which a config loads a fairmonai plugin by kind and name
REGISTRY_TARGETS = frozenset({"fairmonai.registry.create", "fairmonai.registry.get", "fairmonai.registry.info"})

# "1.2.3", optionally followed by a pre-release or build suffix ("1.2.3rc1", "1.2.3-alpha", "1.2.3+local")
_VERSION_RE = re.compile(r"^\d+\.\d+\.\d+(?:[-+.]?[0-9A-Za-z][0-9A-Za-z.+-]*)?$")
_HEX_RE = re.compile(r"^[0-9a-fA-F]+$")
# hash algorithm from the length of a hex digest; MONAI's hash_type is not stored in metadata
_HASH_BY_LENGTH = {32: "md5", 40: "sha1", 64: "sha256", 128: "sha512"}
_REFERENCE_PREFIXES = ("@", "$", "%")  # reference, expression, macro: not literal values
_TYPE_NAMES = {
    str: "a string",
    dict: "an object",
    list: "a list",
    bool: "a boolean",
    int: "an integer",
    float: "a number",
}


@dataclass(frozen=True)
class BundleProblem:
    """One finding: its severity (``"error"``, ``"warning"`` or ``"note"``), the file (relative to the
    bundle root, POSIX separators) and what is wrong."""

    severity: str
    file: str
    message: str

    def __str__(self) -> str:
        return f"{self.severity.upper()} {self.file}: {self.message}"


@dataclass
class BundleReport:
    """Everything :func:`verify_bundle` found in one bundle; ``ok`` means no errors (warnings allowed)."""

    path: Path
    problems: list[BundleProblem] = field(default_factory=list)
    notes: list[BundleProblem] = field(default_factory=list)

    @property
    def errors(self) -> list[BundleProblem]:
        return [p for p in self.problems if p.severity == ERROR]

    @property
    def warnings(self) -> list[BundleProblem]:
        return [p for p in self.problems if p.severity == WARNING]

    @property
    def ok(self) -> bool:
        return not self.errors

    def add(self, severity: str, file: str, message: str) -> None:
        """Record a finding; notes are kept apart so that ``problems`` holds only errors and warnings."""
        if severity not in (ERROR, WARNING, NOTE):
            raise ValueError(f"unknown severity {severity!r}")
        (self.notes if severity == NOTE else self.problems).append(BundleProblem(severity, file, message))

    def format(self) -> str:
        """The report as printed by ``fairmonai verify-bundle``: one line per finding, then the verdict."""
        lines = [str(p) for p in self.problems + self.notes]
        if self.ok:
            lines.append(f"OK: {self.path}")
        else:
            lines.append(f"FAILED: {len(self.errors)} error(s) in {self.path}")
        return "\n".join(lines)


def verify_bundle(
    path: str | os.PathLike, schema_file: str | os.PathLike | None = None, *, static: bool = False
) -> BundleReport:
    """Check the bundle at ``path`` and report every problem found.

    Args:
        path: the bundle root (the folder holding ``configs/``, ``models/``, ``docs/``, ``LICENSE``).
        schema_file: a local copy of the JSON schema named by the metadata's ``schema`` URL; defaults to
            the ``FAIRMONAI_BUNDLE_SCHEMA`` environment variable. Without one the schema check is skipped
            with a note (MONAI would download it; fairmonai never does).
        static: check ``_target_`` values and plugins without importing anything they name (see the
            module docstring); use it for a bundle you do not trust.

    Config files are parsed, never run, but by default resolving a ``_target_`` IMPORTS its module, as
    ``monai.bundle run`` would, which runs the bundle's ``scripts`` code: check only bundles you trust,
    or pass ``static=True``.
    """
    root = Path(path)
    report = BundleReport(path=root)
    if not root.is_dir():
        report.add(ERROR, str(root), "bundle directory not found")
        return report
    if not (root / "LICENSE").is_file():
        report.add(ERROR, "LICENSE", "missing; every bundle ships its licence terms in a LICENSE file")
    metadata = _check_metadata(root, report, schema_file)
    _check_required_configs(root, report)
    if not (root / "docs" / "README.md").is_file():
        report.add(WARNING, "docs/README.md", "missing; describe the bundle's data, use and commands there")
    config_files = [
        f
        for f in sorted((root / "configs").rglob("*"))
        if f.is_file() and f.suffix.lower() in CONFIG_SUFFIXES and _rel(f, root) != METADATA_FILE
    ]
    if static:
        report.add(NOTE, "configs", "static check: _target_ values were located on disk, not imported")
        for config_file in config_files:
            report.problems.extend(_check_config(config_file, root, static=True))
    else:
        with _bundle_on_sys_path(root):
            for config_file in config_files:
                report.problems.extend(_check_config(config_file, root))
    _check_models(root, metadata or {}, report)
    return report


def check_config(
    path: str | os.PathLike, bundle_root: str | os.PathLike | None = None, *, static: bool = False
) -> list[BundleProblem]:
    """Check one config file: it parses, its ``_target_`` values resolve and its plugins are installed.

    ``bundle_root`` (default: the parent of a ``configs/`` folder holding the file, else the file's folder)
    goes on ``sys.path`` while resolving, as ``monai.bundle run`` does, so ``scripts.*`` targets resolve;
    that imports the bundle's code. ``static=True`` locates targets on disk without importing them.
    """
    file = Path(path)
    if bundle_root is None:
        bundle_root = file.parent.parent if file.parent.name == "configs" else file.parent
    root = Path(bundle_root)
    if static:
        return _check_config(file, root, static=True)
    with _bundle_on_sys_path(root):
        return _check_config(file, root)


# ------------------------------------------------------------------------------------------------ metadata


def _check_metadata(root: Path, report: BundleReport, schema_file: str | os.PathLike | None) -> dict | None:
    meta_path = root / METADATA_FILE
    if not meta_path.is_file():
        report.add(ERROR, METADATA_FILE, "missing; a bundle describes itself in configs/metadata.json")
        return None
    duplicates: list[str] = []

    def _pairs(pairs: list[tuple[str, Any]]) -> dict:
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                duplicates.append(key)
            seen.add(key)
        return dict(pairs)

    try:
        metadata = json.loads(meta_path.read_text(encoding="utf-8"), object_pairs_hook=_pairs)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        report.add(ERROR, METADATA_FILE, f"not valid JSON: {exc}")
        return None
    if not isinstance(metadata, dict):
        report.add(ERROR, METADATA_FILE, f"must hold a JSON object, got {type(metadata).__name__}")
        return None
    for key in duplicates:  # json keeps the last value silently
        report.add(WARNING, METADATA_FILE, f"key {key!r} appears more than once; the last value wins")

    for key, expected in REQUIRED_METADATA.items():
        if key not in metadata:
            report.add(ERROR, METADATA_FILE, f"missing required key {key!r}")
        elif not _is_type(metadata[key], expected):
            report.add(ERROR, METADATA_FILE, _type_message(key, metadata[key], expected))

    version, changelog = metadata.get("version"), metadata.get("changelog")
    if isinstance(version, str):
        if not _VERSION_RE.match(version):
            report.add(ERROR, METADATA_FILE, f"version {version!r} is not of the form MAJOR.MINOR.PATCH")
        if isinstance(changelog, dict):
            if version not in changelog:
                report.add(
                    ERROR, METADATA_FILE, f"version {version!r} is not listed in the changelog; add an entry for it"
                )
            newer = [v for v in changelog if _version_key(v) > _version_key(version)]
            if newer:
                report.add(
                    WARNING, METADATA_FILE, f"changelog lists versions newer than {version!r}: {', '.join(newer)}"
                )

    ndf = metadata.get("network_data_format")
    if isinstance(ndf, dict):
        _check_network_data_format(ndf, report)
    _check_schema(metadata, report, schema_file)
    return metadata


def _check_network_data_format(ndf: dict, report: BundleReport) -> None:
    for side in ("inputs", "outputs"):
        where = f"network_data_format.{side}"
        entries = ndf.get(side)
        if entries is None:
            report.add(ERROR, METADATA_FILE, f"missing required key {where!r}")
            continue
        if not isinstance(entries, dict):
            report.add(ERROR, METADATA_FILE, _type_message(where, entries, dict))
            continue
        if not entries:
            report.add(WARNING, METADATA_FILE, f"{where} is empty; describe each named network {side[:-1]}")
        for name, entry in entries.items():
            entry_path = f"{where}.{name}"
            if not isinstance(entry, dict):
                report.add(ERROR, METADATA_FILE, _type_message(entry_path, entry, dict))
                continue
            for key, expected in REQUIRED_TENSOR_KEYS.items():
                if key not in entry:
                    report.add(ERROR, METADATA_FILE, f"missing required key {entry_path}.{key}")
                elif not _is_type(entry[key], expected):
                    report.add(ERROR, METADATA_FILE, _type_message(f"{entry_path}.{key}", entry[key], expected))
            if side == "inputs" and "modality" not in entry:
                report.add(WARNING, METADATA_FILE, f"{entry_path}.modality is missing (e.g. 'MR', 'CT', 'OCT')")


def _check_schema(metadata: dict, report: BundleReport, schema_file: str | os.PathLike | None) -> None:
    url = metadata.get("schema")
    if url is None:
        report.add(NOTE, METADATA_FILE, "no 'schema' key; not validated against MONAI's metadata schema")
        return
    schema_file = schema_file or os.environ.get(SCHEMA_ENV)
    if not schema_file:
        report.add(
            NOTE,
            METADATA_FILE,
            f"schema {url} not checked: MONAI downloads it and fairmonai never downloads anything; "
            f"pass a local copy with --schema FILE or {SCHEMA_ENV}",
        )
        return
    try:
        import jsonschema
    except ImportError:
        report.add(NOTE, METADATA_FILE, f"schema {url} not checked: the jsonschema package is not installed")
        return
    try:
        schema = json.loads(Path(schema_file).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        report.add(ERROR, str(schema_file), f"cannot read the metadata schema: {exc}")
        return
    validator = jsonschema.validators.validator_for(schema)(schema)
    for err in sorted(validator.iter_errors(metadata), key=lambda e: list(e.absolute_path)):
        location = ".".join(str(p) for p in err.absolute_path) or "(top level)"
        report.add(ERROR, METADATA_FILE, f"schema {url}: {location}: {err.message}")


# ------------------------------------------------------------------------------------------------- configs


def _check_required_configs(root: Path, report: BundleReport) -> None:
    # a workflow bundle (fairness_pipeline) has no network to train or infer with: its entry is pipeline.yaml
    names = [f"{stem}{suffix}" for stem in ("inference", "train", "pipeline") for suffix in CONFIG_SUFFIXES]
    if not any((root / "configs" / name).is_file() for name in names):
        report.add(
            ERROR,
            "configs",
            "no configs/inference.(yaml|json), configs/train.(yaml|json) or configs/pipeline.(yaml|json); "
            "a bundle needs one",
        )


def _check_config(file: Path, root: Path, static: bool = False) -> list[BundleProblem]:
    from monai.bundle import ConfigParser

    rel = _rel(file, root)
    problems: list[BundleProblem] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            # load first so that an empty file or a top-level list gets a clear message
            content = ConfigParser.load_config_file(file)
            if not isinstance(content, dict):
                # e.g. a datalist kept under configs/: not a bundle config, but it cannot be run either
                got = "empty" if content is None else f"a {type(content).__name__}"
                return [BundleProblem(WARNING, rel, f"not a bundle config (top level is {got}, not a mapping)")]
            parser = ConfigParser()
            parser.read_config(str(file))
    except Exception as exc:  # any parse failure (YAML/JSON syntax, unsupported tags) is the finding
        return [BundleProblem(ERROR, rel, f"does not parse with monai.bundle.ConfigParser: {_one_line(exc)}")]
    for w in caught:
        if "Duplicate key" in str(w.message):
            problems.append(BundleProblem(WARNING, rel, f"{w.message}; the last value wins"))

    for item_id, item in _components(parser.get()):
        target = item["_target_"]
        if not isinstance(target, str) or target.startswith(_REFERENCE_PREFIXES):
            continue  # computed at run time: nothing to check statically
        failure = _static_unresolved(target, root) if static else _unresolved(target)
        if failure is not None:
            # a component disabled by a literal flag is never built, so a missing optional package is no error
            disabled = str(item.get("_disabled_", False)).strip().lower() == "true"
            problems.append(
                BundleProblem(
                    WARNING if disabled else ERROR,
                    rel,
                    f"_target_ {target!r} at {item_id!r} {failure}" + (" (component is disabled)" if disabled else ""),
                )
            )
            continue
        if target in REGISTRY_TARGETS:
            problems.extend(_check_plugin(item, item_id, rel, load=not static))
    return problems


def _components(config: Any, item_id: str = "") -> Iterator[tuple[str, dict]]:
    """Every mapping with a ``_target_`` key, with its MONAI config id (``a#b#0``), depth first."""
    if isinstance(config, dict):
        if "_target_" in config:
            yield item_id or "(top level)", config
        children: Any = config.items()
    elif isinstance(config, list):
        children = enumerate(config)
    else:
        return
    for key, value in children:
        yield from _components(value, f"{item_id}#{key}" if item_id else str(key))


_locator: Any = None


def _unresolved(target: str) -> str | None:
    """Why ``target`` does not resolve as ``monai.bundle`` would resolve it, or None when it does."""
    global _locator
    if _locator is None:
        from monai.bundle import ComponentLocator

        _locator = ComponentLocator()  # scanning MONAI's modules is slow: do it once per process
    if "." not in target and _locator.get_component_module_name(target) is not None:
        return None  # a MONAI short name such as "LoadImaged"
    try:
        obj = locate(target)
    except ErrorDuringImport as exc:
        return f"cannot be imported: {_one_line(exc.value)}"
    except Exception as exc:  # a module that raises on import must not stop the whole check
        return f"cannot be imported: {_one_line(exc)}"
    if obj is None:
        return "does not resolve to an importable class or function (check the dotted path)"
    return None


def _static_unresolved(target: str, root: Path) -> str | None:
    """Why ``target`` would not resolve, found without importing anything it names (None: it would, or
    it cannot be told without running code, e.g. a module that defines ``__getattr__`` or ``import *``).

    The longest dotted prefix that is a module file is found on disk, first under the bundle root (as
    ``monai.bundle run`` puts it first on ``sys.path``), then in installed packages (only top-level
    names are looked up with ``importlib.util.find_spec``, which imports nothing for them); the next name
    must be defined at the top level of that module's source.
    """
    global _locator
    parts = target.split(".")
    if not all(p.isidentifier() for p in parts):
        return "is not a dotted Python path"
    if len(parts) == 1:
        if _locator is None:
            from monai.bundle import ComponentLocator

            _locator = ComponentLocator()
        if _locator.get_component_module_name(target) is not None:
            return None
        return "is neither a MONAI component name nor a dotted path"
    top = parts[0]
    search: list[Path] = []
    local = [root / top, root / f"{top}.py"]
    if any(p.exists() for p in local):
        search = [root]
    else:
        try:
            spec = importlib.util.find_spec(top)
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            return f"cannot be located: no module {top!r} in the bundle or among the installed packages"
        if spec.submodule_search_locations:
            search = [Path(p).parent for p in spec.submodule_search_locations]
        elif spec.origin and spec.origin.endswith(".py"):
            search = [Path(spec.origin).parent]
        else:
            return None  # a built-in or compiled module: its names cannot be read without importing it
    found = next((f for f in (_static_module(base, parts) for base in search) if f is not None), None)
    if found is None:
        return f"cannot be located: no module file for {target!r}"
    module_file, consumed = found
    if module_file is None or consumed == len(parts):
        return None  # compiled or namespace module (unreadable), or the target is a module itself
    name = parts[consumed]
    defined = _top_level_names(module_file)
    if defined is None or name in defined:
        return None
    return f"does not resolve: {'.'.join(parts[:consumed])} ({_display(module_file, root)}) defines no {name!r}"


def _static_module(base: Path, parts: list[str]) -> tuple[Path | None, int] | None:
    """``(module source file, number of parts it covers)`` of the longest module prefix of ``parts`` under
    ``base``; the file is None for a package without ``__init__.py`` or a compiled module (unreadable)."""
    found: tuple[Path | None, int] | None = None
    folder = base
    for i, part in enumerate(parts, start=1):
        if (folder / part).is_dir():
            init = folder / part / "__init__.py"
            found = (init if init.is_file() else None, i)
            folder = folder / part
        elif (folder / f"{part}.py").is_file():
            return folder / f"{part}.py", i
        elif any(folder.glob(f"{part}.*.so")) or any(folder.glob(f"{part}.*.pyd")):
            return None, i
        else:
            break
    return found


def _top_level_names(module_file: Path) -> set[str] | None:
    """Names bound at the top level of a module's source; None when that cannot be told statically."""
    try:
        tree = ast.parse(module_file.read_text(encoding="utf-8"), filename=str(module_file))
    except (OSError, UnicodeDecodeError, SyntaxError):
        return None  # the import-time error is not ours to report statically
    names: set[str] = set()
    for node in _top_level_statements(tree.body):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            for alias in node.names:
                if alias.name == "*":
                    return None
                names.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                for sub in ast.walk(t):
                    if isinstance(sub, ast.Name):
                        names.add(sub.id)
    if "__getattr__" in names:
        return None
    return names


def _top_level_statements(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Statements run at import time, including those under top-level ``if``/``try``/``with`` blocks."""
    for node in body:
        yield node
        if isinstance(node, ast.If | ast.For | ast.While | ast.With):
            yield from _top_level_statements(node.body)
            yield from _top_level_statements(getattr(node, "orelse", []))
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                yield from _top_level_statements(block)


def _display(file: Path, root: Path) -> str:
    try:
        return file.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(file)


def _check_plugin(item: dict, item_id: str, rel: str, load: bool = True) -> list[BundleProblem]:
    kind, name = item.get("kind"), item.get("name")
    if kind is None or name is None:
        missing = " and ".join(k for k in ("kind", "name") if item.get(k) is None)
        return [BundleProblem(ERROR, rel, f"{item['_target_']} at {item_id!r} needs {missing}")]
    if not (isinstance(kind, str) and isinstance(name, str)):
        return [BundleProblem(ERROR, rel, f"plugin kind and name at {item_id!r} must be strings")]
    if kind.startswith(_REFERENCE_PREFIXES) or name.startswith(_REFERENCE_PREFIXES):
        return []  # chosen at run time
    try:
        if load:
            registry.get(kind, name)  # loads it too: an installed plugin that fails to import is an error
        else:
            registry.info(kind, name)  # static: the entry point is registered; nothing is imported
    except registry.PluginError as exc:  # unknown name (with the closest match), import failure, clash
        return [BundleProblem(ERROR, rel, f"plugin at {item_id!r}: {exc}")]
    return []


@contextlib.contextmanager
def _bundle_on_sys_path(root: Path) -> Iterator[None]:
    """Put the bundle root on ``sys.path`` as ``monai.bundle run`` does, and leave no trace afterwards.

    Modules imported from the bundle (``scripts`` ...) are dropped again, and any module of the same
    name imported earlier (another bundle's ``scripts``) is hidden meanwhile and restored, so that checking
    several bundles in one process resolves each bundle's targets against its own files.
    """
    root_str = str(root.resolve())
    local_names = {p.stem for p in root.iterdir() if p.is_dir() or p.suffix == ".py"}
    hidden = {
        name: mod
        for name, mod in sys.modules.items()
        if name.partition(".")[0] in local_names and not _inside(getattr(mod, "__file__", None), root_str)
    }
    for name in hidden:
        del sys.modules[name]
    before = set(sys.modules)
    sys.path.insert(0, root_str)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(root_str)
        for name in set(sys.modules) - before:  # only new imports can come from the bundle
            if _inside(getattr(sys.modules.get(name), "__file__", None), root_str):
                sys.modules.pop(name, None)
        sys.modules.update(hidden)


# -------------------------------------------------------------------------------------------------- models


def _check_models(root: Path, metadata: dict, report: BundleReport) -> None:
    expected: dict[str, str] = {}
    checksums = metadata.get("checksums")
    if checksums is not None:
        if isinstance(checksums, dict) and all(isinstance(v, str) for v in checksums.values()):
            expected.update(checksums)
        else:
            report.add(ERROR, METADATA_FILE, "'checksums' must map file paths to sha256 hex digests")
    if isinstance(metadata.get("model_checksum"), str):  # MONAI's single-model convention
        expected.setdefault(MODEL_FILE, metadata["model_checksum"])

    for rel, digest in expected.items():
        algorithm = _HASH_BY_LENGTH.get(len(digest)) if _HEX_RE.match(digest) else None
        if algorithm is None:
            report.add(ERROR, METADATA_FILE, f"checksum of {rel} is not a hex md5/sha1/sha256/sha512 digest")
            continue
        target = root / rel
        if not _inside(str(target), str(root.resolve())):
            report.add(ERROR, METADATA_FILE, f"checksum path {rel!r} points outside the bundle")
            continue
        if not target.is_file():
            report.add(WARNING, rel, "not found, so its checksum cannot be checked (model files come from training)")
            continue
        actual = _file_digest(target, algorithm)
        if actual.lower() != digest.lower():
            report.add(ERROR, rel, f"{algorithm} mismatch: metadata records {digest}, the file has {actual}")

    if MODEL_FILE not in expected and not (root / MODEL_FILE).is_file():
        report.add(WARNING, MODEL_FILE, "not found; models are produced by training and are not committed")

    # a file no checksum covers is at least loaded, so that a truncated or corrupt checkpoint fails here
    covered = {os.path.normpath(rel) for rel in expected}
    models = root / "models"
    for file in sorted(models.rglob("*")) if models.is_dir() else []:
        rel = _rel(file, root)
        if file.is_file() and file.suffix.lower() in MODEL_SUFFIXES and os.path.normpath(rel) not in covered:
            failure = _unloadable(file)
            if failure is not None:
                report.add(ERROR, rel, failure)


def _unloadable(path: Path) -> str | None:
    """Why ``torch.load(path, weights_only=True)`` fails (None when it loads): it runs no pickled code."""
    import torch

    if path.stat().st_size == 0:
        return "is empty (0 bytes): not a torch checkpoint (no checksum is recorded for it)"
    try:  # memory-map so that a large checkpoint is not read into memory just to be checked
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return None
    except Exception:  # legacy (non-zip) format, or damage: the plain load gives the clearer message
        pass
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, bad pickle, a class outside the weights_only allow-list
        return f"cannot be loaded with torch.load(weights_only=True) (no checksum is recorded for it): {_one_line(exc)}"
    return None


def _file_digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------------- utils


def _is_type(value: Any, expected: type) -> bool:
    if expected is int:  # JSON true/false load as bool, a subclass of int
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, expected)


def _type_message(where: str, value: Any, expected: type) -> str:
    if value is None:
        got = "null"
    elif isinstance(value, bool):  # before int: bool is a subclass of int
        got = _TYPE_NAMES[bool]
    else:
        got = next((n for t, n in _TYPE_NAMES.items() if isinstance(value, t)), f"a {type(value).__name__}")
    return f"{where} must be {_TYPE_NAMES[expected]}, got {got}"


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version)[:3])


def _rel(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def _inside(file: str | None, root: str) -> bool:
    if not file:
        return False
    resolved = os.path.realpath(file)
    return resolved == root or resolved.startswith(root.rstrip(os.sep) + os.sep)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# ---------------------------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``verify-bundle``, for the ``fairmonai`` command to mount as a sub-command."""
    parser.add_argument("path", nargs="+", help="bundle root folder(s) to check")
    parser.add_argument(
        "--schema",
        default=None,
        help=f"local copy of the metadata JSON schema (never downloaded); default ${SCHEMA_ENV}",
    )
    parser.add_argument(
        "--static",
        action="store_true",
        help="do not import the bundle's code: locate _target_ paths on disk and read, not run, their source "
        "(by default resolving a _target_ imports its module, running the bundle's scripts)",
    )


def run_cli(args: argparse.Namespace) -> int:
    """Print the report of each bundle; 0 when none has an error, 1 otherwise."""
    status = 0
    for path in args.path:
        report = verify_bundle(path, schema_file=args.schema, static=getattr(args, "static", False))
        print(report.format())
        status = status or int(not report.ok)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """``fairmonai verify-bundle PATH [PATH ...] [--schema FILE] [--static]``; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="fairmonai verify-bundle",
        description="Check MONAI bundles: files, metadata, configs, _target_ paths, plugins, checksums and "
        "model files. Resolving _target_ paths imports the bundle's code (as monai.bundle run does); "
        "--static checks them without importing anything.",
    )
    add_arguments(parser)
    return run_cli(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
