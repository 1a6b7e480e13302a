"""The ``fairmonai`` command: plugins, phantom, audit, verify-bundle, demo."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fairmonai.errors import FairMonaiError, located_cause

__all__ = ["main"]


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _key_values(pairs: Sequence[str] | None, option: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"{option} expects KEY=VALUE, got {pair!r}")
        out[key] = _parse_value(value)
    return out


def _cmd_plugins(args: argparse.Namespace) -> int:
    from fairmonai import registry

    rows = [("KIND", "NAME", "PACKAGE", "VERSION", "TARGET")]
    rows += [(p.kind, p.name, p.package, p.version, p.target) for p in registry.plugins(args.kind)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _cmd_phantom(args: argparse.Namespace) -> int:
    from fairmonai.phantoms import existing_phantom, make_phantom

    start = time.perf_counter()
    kwargs: dict[str, Any] = {}
    bias = _key_values(args.bias, "--bias")
    if bias:
        kwargs["bias"] = bias
    reused = existing_phantom(args.kind, args.out, subjects=args.subjects, seed=args.seed, **kwargs) is not None
    manifest = make_phantom(args.kind, args.out, subjects=args.subjects, seed=args.seed, force=args.force, **kwargs)
    done = "reused the identical" if reused else "wrote"
    print(f"{done} {args.kind} cohort: {manifest} ({time.perf_counter() - start:.1f} s)")
    return 0


def _group_spec(args: argparse.Namespace):
    from fairmonai.cohort import GroupSpec
    from fairmonai.phantoms import default_groups

    if args.groups and args.preset:
        raise SystemExit("give either --groups or --preset, not both")
    if args.preset:
        return default_groups(args.preset)
    if args.groups:
        return GroupSpec.parse(args.groups, include_label=args.include_label)
    raise SystemExit("name the groups with --groups 'sex,age:60:70' or --preset cardiac|fundus|dicom")


def _audit(manifest: Path, spec, out: Path, dicom_tags: bool, title: str | None) -> dict[str, Path]:
    from fairmonai.cohort import Cohort
    from fairmonai.report.audit import write_audit

    cohort = Cohort.from_manifest(manifest)
    if dicom_tags:
        from fairmonai.io.dicom import attributes_from_dicom

        cohort = attributes_from_dicom(cohort)
    cohort = cohort.with_spec(spec)
    return write_audit(cohort, out, title=title or f"Cohort audit: {manifest.name}")


def _cmd_audit(args: argparse.Namespace) -> int:
    paths = _audit(Path(args.manifest), _group_spec(args), Path(args.out), args.dicom_tags, args.title)
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


def _cmd_verify_bundle(args: argparse.Namespace) -> int:
    from fairmonai.bundle_check import main as verify_main

    return verify_main([args.path] + (["--static"] if args.static else []))


def _cmd_demo(args: argparse.Namespace) -> int:
    """The main job on the built-in cohort: build the biased cardiac cohort, then audit it."""
    from fairmonai.phantoms import default_groups, make_phantom

    out = Path(args.out)
    start = time.perf_counter()
    manifest = out / "cohort" / "manifest.csv"
    if manifest.is_file() and not args.force:
        print(f"cohort already built: {manifest} (use --force to rebuild)")
    else:
        manifest = make_phantom("cardiac", out / "cohort", subjects=args.subjects, seed=args.seed)
    built = time.perf_counter()
    paths = _audit(manifest, default_groups("cardiac"), out / "audit", False, "Built-in cardiac cohort: audit")
    done = time.perf_counter()
    print(f"cohort: {manifest} ({built - start:.1f} s)")
    for name, path in paths.items():
        print(f"{name}: {path}")
    print(f"demo finished in {done - start:.1f} s; open {paths.get('html', out / 'audit')}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fairmonai", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("plugins", help="list installed samplers, losses, metrics and filters")
    p.add_argument("--kind", choices=["sampler", "loss", "metric", "filter"], help="only this kind")
    p.set_defaults(func=_cmd_plugins)

    p = sub.add_parser("phantom", help="write a built-in biased cohort as real files plus a manifest")
    p.add_argument("kind", choices=["cardiac", "fundus", "dicom"])
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--subjects", type=int, default=None, help="number of subjects (default: the kind's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bias", nargs="*", metavar="KEY=VALUE", help="bias knobs, e.g. hf_prevalence=0.2")
    p.add_argument("--force", action="store_true", help="replace --out even if it holds another cohort or other files")
    p.set_defaults(func=_cmd_phantom)

    p = sub.add_parser("audit", help="counts per group, imbalance ratios, plots and an HTML page")
    p.add_argument("manifest", help="CSV or JSON manifest")
    p.add_argument("--groups", help="grouping attributes with optional bins, e.g. 'sex,age:60:70,bmi:25:30'")
    p.add_argument("--include-label", action="store_true", help="make the label part of the group key")
    p.add_argument("--preset", choices=["cardiac", "fundus", "dicom"], help="the groups of a built-in cohort")
    p.add_argument("--dicom-tags", action="store_true", help="read missing attributes from DICOM tags")
    p.add_argument("--title", help="report title")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=_cmd_audit)

    p = sub.add_parser("verify-bundle", help="model-zoo and fairmonai checks of a MONAI bundle")
    p.add_argument("path", help="bundle folder")
    p.add_argument("--static", action="store_true", help="check _target_ paths without importing the bundle's code")
    p.set_defaults(func=_cmd_verify_bundle)

    p = sub.add_parser("demo", help="build the built-in cardiac cohort and audit it")
    p.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    p.add_argument("--subjects", type=int, default=240)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="rebuild the cohort even if it exists")
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (FairMonaiError, ValueError, LookupError, ImportError, RuntimeError) as exc:
        # input and plugin errors already say where the problem is: print them without a traceback
        cause = located_cause(exc)
        if isinstance(exc, RuntimeError) and cause is exc:
            raise  # a genuine failure, not bad input: keep the traceback
        print(f"fairmonai {args.command}: error: {cause}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
