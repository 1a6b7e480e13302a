"""The ``fairmonai`` command: plugins, phantom, audit, manifest, verify-bundle, demo."""

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

SPLIT_NAMES = ("training", "validation", "test")
TASK_CHOICES = ["classification", "segmentation", "none"]


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


def _warn(command: str, notes: Sequence[str]) -> None:
    for note in notes:
        print(f"fairmonai {command}: warning: {note}", file=sys.stderr)


def _read_checked(
    command: str,
    manifest: Path,
    spec,
    dicom_tags: bool,
    task: str | None,
    check_files: bool = True,
    strict: bool = True,
):
    """Read a manifest (or YAML mapping) and run the checks training runs; print the warnings.

    ``strict=False``: what would stop training (no validation split, a single class, an attribute level
    training lacks) is printed as a warning instead of raised.
    """
    import warnings

    from fairmonai.checks import check_cohort
    from fairmonai.cohort import Cohort

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        cohort = Cohort.from_manifest(manifest, check_files=check_files)
    notes = [str(w.message) for w in caught]
    if dicom_tags:
        from fairmonai.io.dicom import attributes_from_dicom

        cohort = attributes_from_dicom(cohort)
    if spec is not None:
        cohort = cohort.with_spec(spec)
    notes += check_cohort(cohort, task=task, splits_as_warnings=not strict)
    if check_files:
        from fairmonai.io.inspect import inspect_cohort

        # every image's header (shape, dimensionality, truncation, mask/image agreement), no voxels read
        notes += inspect_cohort(cohort)
    _warn(command, notes)
    return cohort, notes


def _task(text: str) -> str | None:
    return None if text == "none" else text


def _audit(
    manifest: Path,
    spec,
    out: Path,
    dicom_tags: bool,
    title: str | None,
    task: str | None = "classification",
    strict: bool = False,
    force: bool = False,
) -> dict[str, Path]:
    from fairmonai.report.audit import write_audit

    cohort, notes = _read_checked("audit", manifest, spec, dicom_tags, task, strict=strict)
    return write_audit(cohort, out, title=title or f"Cohort audit: {manifest.name}", force=force, notes=notes)


def _cmd_audit(args: argparse.Namespace) -> int:
    spec = _group_spec(args)
    paths = _audit(
        Path(args.manifest),
        spec,
        Path(args.out),
        args.dicom_tags,
        args.title,
        _task(args.task),
        args.strict,
        args.force,
    )
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


def _cmd_manifest(args: argparse.Namespace) -> int:
    """Write (atomically) and validate the project-format manifest a YAML mapping (or any manifest) stands for."""
    from collections import Counter

    from fairmonai.io.manifest import read_manifest, write_manifest

    source, out = Path(args.mapping), Path(args.out)
    if out.resolve() == source.resolve():
        raise SystemExit("--out must not be the input file")
    spec = _group_spec(args) if (args.groups or args.preset) else None
    cohort, _ = _read_checked("manifest", source, spec, False, _task(args.task), check_files=not args.no_check_files)
    if out.suffix.lower() == ".json" and any(r.extra.get("split") is None for r in cohort.records):
        raise SystemExit("records without a split would land in the JSON datalist's 'training' list: write a .csv")
    write_manifest(cohort.records, out)
    again = read_manifest(out, check_files=not args.no_check_files)  # the written file reads back the same
    by_id = {r.id: r.to_dict() for r in cohort.records}  # a JSON datalist groups records by split
    if len(again) != len(by_id) or any(by_id.get(r.id) != r.to_dict() for r in again):
        raise RuntimeError(f"{out} does not read back as the records written")
    tables = sorted({r.source_path for r in cohort.records if r.source_path})
    splits = Counter(r.extra.get("split") or "none" for r in cohort.records)
    labels = Counter(str(r.label) for r in cohort.records if r.label is not None)
    attributes = list(dict.fromkeys(a for r in cohort.records for a in r.attributes))
    columns = list(dict.fromkeys(c for r in cohort.records for c in r.to_dict()))
    print(f"{len(cohort)} records from {', '.join(tables)} (via {source})")
    print("splits: " + ", ".join(f"{k} {splits[k]}" for k in (*SPLIT_NAMES, "none") if splits.get(k)))
    if labels:
        print("labels: " + ", ".join(f"{k} {n}" for k, n in sorted(labels.items())))
    print(f"attributes: {', '.join(attributes) or 'none'}")
    if spec is not None:
        groups = cohort.counts()
        print(f"groups: {sum(1 for n in groups.values() if n)} of {len(groups)} non-empty")
    print(f"columns: {', '.join(columns)}")
    print(f"wrote {out}")
    return 0


def _cmd_verify_bundle(args: argparse.Namespace) -> int:
    from fairmonai.bundle_check import main as verify_main

    return verify_main([args.path] + (["--static"] if args.static else []))


def _cmd_report(args: argparse.Namespace) -> int:
    """Rebuild RUN_DIR/report.html (and its figures) from RUN_DIR/report.json alone."""
    from fairmonai.report.pipeline import render_report

    print(render_report(args.run_dir))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    """The main job on the built-in cohort: build the biased cardiac cohort, then run the debiasing pipeline
    (bundles/fairness_pipeline with its demo preset): audit, generator, synthesis, every arm over seeds, report."""
    from fairmonai.phantoms import make_phantom
    from fairmonai.pipeline.run import load_settings, render_available, run_pipeline

    out = Path(args.out)
    start = time.perf_counter()
    given = _key_values(args.set, "--set")
    overrides: dict[str, Any] = {"run_dir": str(out / "pipeline")}
    if given.get("manifest") is not None:  # the user's cohort (a manifest or a mapping): no built-in one
        overrides["title"] = f"fairness pipeline: {given['manifest']}"
    else:
        manifest = out / "cohort" / "manifest.csv"
        if manifest.is_file() and not args.force:
            print(f"cohort already built: {manifest} (use --force to rebuild)")
        else:
            manifest = make_phantom("cardiac", out / "cohort", subjects=args.subjects, seed=args.seed, force=args.force)
        print(f"cohort: {manifest} ({time.perf_counter() - start:.1f} s)")
        overrides["manifest"] = str(manifest)
        overrides["title"] = f"fairness pipeline: built-in cardiac cohort ({args.subjects} subjects, seed {args.seed})"
    overrides |= given
    overrides.setdefault("report", render_available())
    settings = load_settings(args.preset, overrides)
    result = run_pipeline(settings)
    print(f"demo finished in {time.perf_counter() - start:.1f} s")
    print(f"report.json: {result['report_json']}")
    if result["report_html"] is not None:
        print(f"report.html: {result['report_html']}  (open it in a browser)")
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
    p.add_argument("--out", required=True, help="output folder (an earlier audit there is replaced whole)")
    p.add_argument("--force", action="store_true", help="replace --out even if it is not an earlier audit")
    p.add_argument(
        "--task", choices=TASK_CHOICES, default="classification", help="run the checks training for this task runs"
    )
    p.add_argument(
        "--strict", action="store_true", help="fail (instead of warn) on what would stop training, e.g. no validation"
    )
    p.set_defaults(func=_cmd_audit)

    p = sub.add_parser(
        "manifest",
        help="write and validate the project-format manifest of a YAML mapping of a team's own table and layout",
    )
    p.add_argument("mapping", help="YAML mapping (see docs/custom_data.md), or a CSV / JSON manifest to check")
    p.add_argument("--out", required=True, help="manifest to write (.csv or .json), atomically")
    p.add_argument("--groups", help="also check the groups, e.g. 'sex,age:60:70,bmi:25:30'")
    p.add_argument("--include-label", action="store_true", help="make the label part of the group key")
    p.add_argument("--preset", choices=["cardiac", "fundus", "dicom"], help="also check the groups of a preset")
    p.add_argument("--task", choices=TASK_CHOICES, default="classification", help="checks of this task's training")
    p.add_argument("--no-check-files", action="store_true", help="do not require the image and label files to exist")
    p.set_defaults(func=_cmd_manifest)

    p = sub.add_parser("verify-bundle", help="model-zoo and fairmonai checks of a MONAI bundle")
    p.add_argument("path", help="bundle folder")
    p.add_argument("--static", action="store_true", help="check _target_ paths without importing the bundle's code")
    p.set_defaults(func=_cmd_verify_bundle)

    p = sub.add_parser("report", help="rebuild a pipeline run's report.html and figures from its report.json")
    p.add_argument("run_dir", metavar="RUN_DIR", help="the pipeline's run folder (holds report.json)")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("demo", help="build the built-in cardiac cohort and run the debiasing pipeline on it")
    p.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    p.add_argument("--subjects", type=int, default=240)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="rebuild the cohort even if it exists")
    p.add_argument(
        "--preset", default="demo", help="fairness_pipeline overlay: demo (2-core CPU, minutes; default), gpu, none"
    )
    p.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="pipeline settings, e.g. seeds=[0] n_boot=100")
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
