"""The debiasing pipeline: audit, train the generator, synthesise to balance, (filter), train and evaluate the
downstream model in several arms over several seeds, aggregate into ``report.json`` (and ``report.html``).

Every step is another bundle's workflow run in this process (:func:`fairmonai.pipeline.bundles.run_bundle`), or
a small function of this package (the audit, the per-group thresholds, the aggregation), run through a
:class:`~fairmonai.pipeline.steps.StepRunner`: a rerun skips finished steps, a changed setting reruns the steps
that depend on it. ``bundles/fairness_pipeline/docs/README.md`` describes the steps, settings and outputs.

Run folder layout (all paths in ``report.json`` are relative to it)::

    cohort/                     the built-in cohort, when no manifest is given
    audit/                      audit.html, audit.json, counts.csv, ...
    generator/<stage>/          models/ (weights), logs/ (TensorBoard, per-group losses), history.json
    synthesis/                  synthetic.csv, synthesis.json, one folder per synthetic subject
    filter/                     synthetic.csv (the kept rows), filter.json[, filter_groups.csv]  (only with a filter)
    generator/eval/             generation_metrics.json, generation_grid.png   (only with generator_eval)
    arms/<arm>/seed<k>/train/   models/model.pt (best on validation), history.json, validation metrics
    arms/<arm>/seed<k>/eval/    test_metrics.json, test_per_group.csv, test_predictions.csv (+ validation_*)
    arms/<thresholds arm>/seed<k>/   thresholds.json, test_metrics.json, ...
    steps/<step>.json           completion records
    report.json                 the aggregate (schema fairmonai.pipeline_report/1)
"""

from __future__ import annotations

import csv
import datetime
import json
import os
import platform
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fairmonai.errors import InputError
from fairmonai.pipeline import aggregate
from fairmonai.pipeline.bundles import config_files, run_bundle, split_overrides
from fairmonai.pipeline.steps import FileBarrier, Step, StepRunner, _plain

__all__ = ["run_pipeline", "pipeline_steps"]

#: settings that never change a step's result (left out of every key)
NOT_IN_KEYS = ("progress", "log_level", "prune_checkpoints")


# ============================================================================================== helpers
def _fill(template: Any, folders: Mapping[str, Path]) -> Any:
    """``{stage}`` placeholders of path templates -> the stage folders (``{self}``: the step's own)."""
    if isinstance(template, str):
        try:
            return template.format(**{k: str(v) for k, v in folders.items()})
        except (KeyError, IndexError) as exc:
            raise InputError(
                f"path template {template!r} names an unknown step {exc}; known: {sorted(folders)}"
            ) from None
    if isinstance(template, Mapping):
        return {k: _fill(v, folders) for k, v in template.items()}
    return template


def _keyed(overrides: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in overrides.items() if k not in NOT_IN_KEYS}


def _read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _rel(path: Path, run_dir: Path) -> str:
    return Path(os.path.relpath(Path(path).resolve(), run_dir.resolve())).as_posix()


#: validation metrics of a downstream training history kept in report.json (as ``val_<name>``)
HISTORY_METRICS = ("balanced_accuracy", "auc", "worst_group_balanced_accuracy", "balanced_accuracy_gap")


def _history(path: Path, loss_name: str | None = None, metrics: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Epoch entries of a TrainingHistory JSON: ``epoch``, the training loss (as ``loss_name`` when given, else
    ``train_loss``) and, with ``metrics``, those validation metrics as ``val_<name>``."""
    if not Path(path).is_file():
        return []
    out = []
    for entry in _read_json(path).get("epochs", []):
        row: dict[str, Any] = {"epoch": entry.get("epoch"), loss_name or "train_loss": entry.get("train_loss")}
        for name in metrics or ():
            if name in entry:
                row[f"val_{name}"] = entry[name]
        out.append(row)
    return out


def _prune(folder: Path) -> None:
    """Delete a finished training's resumable checkpoints (its step is done; model files stay)."""
    import shutil

    if folder.is_dir():
        shutil.rmtree(folder)


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    import numpy
    import torch

    import fairmonai

    versions = {
        "fairmonai": getattr(fairmonai, "__version__", "unknown"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
    }
    for dist in ("monai", "diffusers", "pytorch-ignite"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return versions


def _machine(device: str) -> dict[str, Any]:
    import torch

    out = {"device": str(device), "cpu_threads": int(torch.get_num_threads()), "platform": platform.platform()}
    if str(device).startswith("cuda") and torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
    return out


def _rewrite_paths(rows: list[dict[str, str]], source: Path, target: Path) -> list[dict[str, str]]:
    """Manifest rows moved from folder ``source`` to ``target``: relative paths that exist re-based."""
    out = []
    for row in rows:
        new = dict(row)
        for k, v in row.items():
            if v and not os.path.isabs(v) and ("/" in v or "." in v) and (source / v).exists():
                new[k] = os.path.relpath(source / v, target)
        out.append(new)
    return out


def _manifest_filter(plugin: Any, name: str, manifest: Path, out: Path, run_dir: Path) -> dict[str, Any]:
    """Run a filter plugin of the ``filter_manifest(manifest, out_dir) -> dict`` protocol and check what it wrote:
    ``out/synthetic.csv`` (whose paths must resolve from ``out``), optionally ``out/filter_groups.csv``.

    Returns the plugin's summary with ``name``, ``kept`` and ``dropped`` (counted from the manifests) and the
    run-relative ``manifest`` / ``groups_table`` paths.
    """
    from fairmonai.io.manifest import PATH_COLUMNS

    summary = plugin.filter_manifest(manifest, out)
    if not isinstance(summary, Mapping):
        raise RuntimeError(f"filter {name!r}: filter_manifest returned {type(summary).__name__}, not a dict")
    try:
        summary = json.loads(json.dumps(dict(summary), allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise RuntimeError(f"filter {name!r}: the summary filter_manifest returned is not JSON-ready: {exc}") from exc
    written = out / "synthetic.csv"
    if not written.is_file():
        raise RuntimeError(f"filter {name!r}: filter_manifest wrote no {written}")
    kept = _read_csv(written) if written.stat().st_size else []
    for line, row in enumerate(kept, start=2):
        for col in PATH_COLUMNS:
            value = row.get(col)
            if value and not (out / value).exists():
                raise RuntimeError(f"filter {name!r}: {written}, row {line}, field {col!r}: {value} does not resolve")
    total = len(_read_csv(manifest)) if manifest.is_file() and manifest.stat().st_size else 0
    info: dict[str, Any] = {**summary, "name": name, "kept": len(kept), "dropped": total - len(kept)}
    info["manifest"] = _rel(written, run_dir)
    if (out / "filter_groups.csv").is_file():
        info["groups_table"] = _rel(out / "filter_groups.csv", run_dir)
    return info


# ================================================================================================= steps
class _Pipeline:
    def __init__(self, settings: Mapping[str, Any], stream: Any = "stdout") -> None:
        self.s = dict(settings)
        self.run_dir = Path(self.s["run_dir"]).resolve()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.stream = sys.stdout if stream == "stdout" else stream
        self.progress = bool(self.s.get("progress", True))
        self.log_level = self.s.get("log_level")
        self.prune = bool(self.s.get("prune_checkpoints", True))
        # under torchrun (WORLD_SIZE > 1): training steps on every process, the others on process 0
        self.barrier = FileBarrier.from_env(self.run_dir) if self.s.get("distributed", True) is not False else None
        self.rank = self.barrier.rank if self.barrier is not None else 0
        self.seeds = [int(k) for k in self.s.get("seeds", [0])]
        if not self.seeds:
            raise InputError("seeds is empty: give at least one seed", field="seeds")
        self.arm_names = list(self.s.get("arms", []))
        definitions = self.s.get("arm_settings") or {}
        unknown = [a for a in self.arm_names if a not in definitions]
        if unknown:
            raise InputError(
                f"arms {unknown} have no entry in arm_settings (defined: {sorted(definitions)})", field="arms"
            )
        self.arms = {a: dict(definitions[a]) for a in self.arm_names}
        for name, arm in self.arms.items():
            kind = arm.get("kind", "train")
            if kind not in ("train", "thresholds"):
                raise InputError(
                    f"arm {name!r}: kind {kind!r} is neither 'train' nor 'thresholds'", field="arm_settings"
                )
            if kind == "thresholds" and self.arms.get(arm.get("source", "real"), {}).get("kind", "train") != "train":
                raise InputError(
                    f"arm {name!r} takes thresholds from arm {arm.get('source', 'real')!r}, which is not a training "
                    f"arm of this run (arms: {self.arm_names})",
                    field="arm_settings",
                )
        self.needs_synthetic = any(a.get("synthetic") for a in self.arms.values())
        self.steps: list[Step] = []
        self.folders: dict[str, Path] = {}

    # ---------------------------------------------------------------------------------------- cohort
    def manifest(self) -> Path:
        from fairmonai.engines.classification import cohort_manifest

        manifest = self.s.get("manifest")
        if manifest in (None, ""):
            subjects, seed = int(self.s.get("phantom_subjects", 240)), int(self.s.get("phantom_seed", 0))
            manifest = cohort_manifest(None, self.run_dir / "cohort", subjects, seed)
        path = Path(manifest)
        if not path.is_file():
            raise InputError(f"manifest {path} does not exist", path=path, field="manifest")
        return path

    def cohort(self):
        from fairmonai.cohort import Cohort
        from fairmonai.engines.data import group_spec

        return Cohort.from_manifest(self.manifest_file, group_spec(self.s.get("groups", "cardiac")))

    # -------------------------------------------------------------------------------------- building
    def common(self) -> dict[str, Any]:
        """Settings every bundle gets when it has them."""
        out = {
            "manifest": str(self.manifest_file),
            "groups": self.s.get("groups", "cardiac"),
            "data_kind": self.s.get("data_kind", "cine"),
            "image_size": self.s.get("image_size"),
            "progress": self.progress,
        }
        if self.s.get("device") not in (None, ""):
            out["device"] = self.s["device"]
        return out

    def bundle_step(
        self,
        name: str,
        bundle: str,
        configs: Sequence[str],
        common: Mapping[str, Any],
        overrides: Mapping[str, Any],
        paths: Mapping[str, Any],
        upstream: Sequence[str] = (),
        before_run: Any = None,
        after_run: Any = None,
        extra: Mapping[str, Any] | None = None,
        distributed_config: str | None = None,
    ) -> Step:
        parallel = self.barrier is not None and bool(distributed_config)
        if parallel:  # the overlay sets up (initialize) and destroys (finalize) the process group of this step
            configs = [*configs, str(distributed_config)]
        files = config_files(bundle, configs)
        folder = self.run_dir / name
        self.folders[name] = folder

        def action(out: Path) -> Any:
            resolved = _fill(paths, {**self.templates(), "self": out})
            values = split_overrides(files, {**common, **resolved}, overrides, f"step {name}")
            hook = (lambda wf: before_run(wf, out)) if before_run is not None else None
            run_bundle(bundle, [str(f) for f in files], values, before_run=hook, log_level=self.log_level)
            return after_run(out) if after_run is not None else None

        # the key: what the bundle computes from (never where it writes)
        settings = {
            "bundle": Path(bundle).name,
            "configs": [f.name for f in files],
            "common": _keyed({k: v for k, v in common.items() if k != "manifest"}),
            "overrides": _keyed(overrides),
            **(extra or {}),
        }
        inputs = [*files, *self.manifest_inputs]
        step = Step(name, _plain(settings), action, files=inputs, upstream=list(upstream), parallel=parallel)
        self.steps.append(step)
        return step

    def templates(self) -> dict[str, Path]:
        return {k.replace("/", "_"): v for k, v in self.folders.items()} | {
            "run_dir": self.run_dir,
            "cache": self.run_dir / "cache",
        }

    # --------------------------------------------------------------------------------------------- audit
    def add_audit(self) -> None:
        spec_groups = self.s.get("groups", "cardiac")

        def action(out: Path) -> Any:
            from fairmonai.report.audit import write_audit

            paths = write_audit(self.cohort(), out, title=f"Cohort audit: {self.manifest_file.name}", force=True)
            return {k: _rel(v, self.run_dir) for k, v in paths.items()}

        self.folders["audit"] = self.run_dir / "audit"
        self.steps.append(Step("audit", {"groups": spec_groups}, action, files=self.manifest_inputs))

    # ------------------------------------------------------------------------------------------ generator
    def add_generator(self) -> str:
        """Generator stages, synthesis, optional filter and evaluation; returns the step of the final manifest."""
        bundle = str(self.s["generator_bundle"])
        stages: Mapping[str, Mapping[str, Any]] = self.s.get("generator_stages") or {}
        common = {**self.common(), **dict(self.s.get("generator_overrides") or {})}
        previous: list[str] = []
        for stage, spec in stages.items():
            name = f"generator/{stage}"
            self.folders[name] = self.run_dir / name

            def attach_history(workflow: Any, out: Path) -> None:
                from fairmonai.engines import TrainingHistory

                if self.rank != 0:
                    return
                trainer = workflow.parser.get_parsed_content("train#trainer")
                TrainingHistory(out / "history.json").attach(trainer)

            self.bundle_step(
                name,
                bundle,
                [spec["config"]],
                common,
                dict(spec.get("overrides") or {}),
                {"output_dir": "{self}/logs", "model_dir": "{self}/models", **dict(spec.get("paths") or {})},
                upstream=list(previous),
                before_run=attach_history,
                after_run=(lambda out: _prune(out / "logs" / "checkpoints")) if self.prune and self.rank == 0 else None,
                distributed_config=self.s.get("generator_distributed_config"),
            )
            previous.append(name)
        synthesis = self.s.get("synthesis") or {}
        target = self.s.get("synthesis_target", "largest")
        overrides = {**dict(synthesis.get("overrides") or {}), "target": target}

        def counts(out: Path) -> Any:
            summary = _read_json(out / "synthesis.json")
            return {"summary": "synthesis.json", "manifest": _rel(out / "synthetic.csv", self.run_dir), **summary}

        self.bundle_step(
            "synthesis",
            bundle,
            [synthesis.get("config", "inference.yaml")],
            common,
            overrides,
            {"output_dir": "{self}/logs", "out_dir": "{self}", **dict(synthesis.get("paths") or {})},
            upstream=list(previous),
            after_run=counts,
        )
        self.folders["synthesis"] = self.run_dir / "synthesis"
        final = "synthesis"
        filt = self.s.get("filter")
        if filt:
            self.add_filter(filt)
            final = "filter"
        if self.s.get("generator_eval"):
            ev = self.s.get("generator_evaluation") or {}
            self.bundle_step(
                "generator/eval",
                bundle,
                [ev.get("config", "evaluate.yaml")],
                {**common, "n_boot": int(self.s.get("n_boot", 1000))},
                dict(ev.get("overrides") or {}),
                {
                    "output_dir": "{self}",
                    "model_dir": "{self}/models",
                    "reference_dir": "{self}/reference",
                    "synthetic_manifest": "{" + final + "}/synthetic.csv",
                },
                upstream=[final],
            )
        return final

    def add_filter(self, filt: Mapping[str, Any] | str) -> None:
        spec = {"name": filt} if isinstance(filt, str) else dict(filt)
        if "name" not in spec:
            raise InputError("filter needs a name (an installed filter plugin) or null", field="filter")
        source = self.run_dir / "synthesis"

        def action(out: Path) -> Any:
            from fairmonai import registry

            plugin = registry.create("filter", spec["name"], **dict(spec.get("options") or {}))
            manifest = source / "synthetic.csv"
            if callable(getattr(plugin, "filter_manifest", None)):
                info = _manifest_filter(plugin, spec["name"], manifest, out, self.run_dir)
            else:
                rows = _read_csv(manifest)
                keep = [bool(k) for k in plugin(manifest)]
                if len(keep) != len(rows):
                    raise RuntimeError(
                        f"filter {spec['name']!r} returned {len(keep)} flags for the {len(rows)} rows of {manifest}"
                    )
                kept = [r for r, k in zip(rows, keep, strict=True) if k]
                from fairmonai.engines.results import write_rows_csv

                columns = list(rows[0]) if rows else []
                write_rows_csv(_rewrite_paths(kept, source, out), out / "synthetic.csv", columns)
                info = {"name": spec["name"], "kept": len(kept), "dropped": len(rows) - len(kept)}
            (out / "filter.json").write_text(json.dumps({**info, "options": spec.get("options") or {}}, indent=1))
            return info

        # weights (or other files) a filter's options name: a changed file reruns the filter
        files = [str(v) for v in dict(spec.get("options") or {}).values() if isinstance(v, str) and Path(v).is_file()]
        self.folders["filter"] = self.run_dir / "filter"
        self.steps.append(Step("filter", _plain(spec), action, files=files, upstream=["synthesis"]))

    # ----------------------------------------------------------------------------------------------- arms
    def add_arms(self, synthetic_step: str | None) -> None:
        bundle = str(self.s["downstream_bundle"])
        common = {**self.common(), **dict(self.s.get("downstream_overrides") or {})}
        train_config = self.s.get("downstream_train_config", "train.yaml")
        eval_config = self.s.get("downstream_eval_config", "evaluate.yaml")
        threshold_sources = {a.get("source", "real") for a in self.arms.values() if a.get("kind") == "thresholds"}
        n_boot = int(self.s.get("n_boot", 1000))
        for arm_name, arm in self.arms.items():
            if arm.get("kind", "train") != "train":
                continue
            overrides = dict(self.s.get("downstream_train") or {}) | dict(arm.get("overrides") or {})
            upstream = []
            paths: dict[str, Any] = {"output_dir": "{self}", "model_dir": "{self}/models"}
            if arm.get("synthetic"):
                if synthetic_step is None:
                    raise RuntimeError("a synthetic arm needs the synthesis step")
                upstream.append(synthetic_step)
                paths["synthetic_manifest"] = "{" + synthetic_step + "}/synthetic.csv"
            splits = ["test"] + (["validation"] if arm_name in threshold_sources else [])
            eval_overrides = {k: v for k, v in overrides.items() if k in ("network_name", "network_options")}
            for seed in self.seeds:
                base = f"arms/{arm_name}/seed{seed}"
                self.bundle_step(
                    f"{base}/train",
                    bundle,
                    [train_config],
                    common,
                    {**overrides, "seed": seed},
                    paths,
                    upstream=upstream,
                    extra={"synthetic": bool(arm.get("synthetic"))},
                    after_run=(lambda out: _prune(out / "checkpoints")) if self.prune and self.rank == 0 else None,
                    distributed_config=self.s.get("downstream_distributed_config"),
                )
                self.add_eval(f"{base}/eval", bundle, eval_config, common, eval_overrides, seed, n_boot, splits)

    def add_eval(self, name, bundle, config, common, overrides, seed, n_boot, splits) -> None:
        files = config_files(bundle, [config])
        train = name.rsplit("/", 1)[0] + "/train"
        self.folders[name] = self.run_dir / name

        def action(out: Path) -> Any:
            for split in splits:
                resolved = {
                    "output_dir": str(out),
                    "ckpt_path": str(self.folders[train] / "models" / "model.pt"),
                    "cache": "none",
                    "eval_split": split,
                    "n_boot": n_boot,
                    "seed": seed,
                }
                values = split_overrides(files, {**common, **resolved}, overrides, f"step {name}")
                run_bundle(bundle, [str(f) for f in files], values, log_level=self.log_level)
            return {"splits": list(splits)}

        settings = {
            "bundle": Path(bundle).name,
            "configs": [config],
            "common": _keyed({k: v for k, v in common.items() if k != "manifest"}),
            "overrides": _keyed(overrides),
            "seed": seed,
            "n_boot": n_boot,
            "splits": list(splits),
        }
        self.steps.append(Step(name, _plain(settings), action, files=[*files, *self.manifest_inputs], upstream=[train]))

    def add_threshold_arms(self) -> None:
        n_boot = int(self.s.get("n_boot", 1000))
        for arm_name, arm in self.arms.items():
            if arm.get("kind") != "thresholds":
                continue
            source = arm.get("source", "real")
            attributes = arm.get("attributes")
            min_count = int(arm.get("min_count", 10))
            for seed in self.seeds:
                name = f"arms/{arm_name}/seed{seed}"
                src = f"arms/{source}/seed{seed}/eval"
                self.folders[name] = self.run_dir / name

                def action(out: Path, src: str = src, seed: int = seed, attrs=attributes, least=min_count) -> Any:
                    return self.thresholds(out, self.folders[src], attrs, least, n_boot, seed)

                settings = {"source": source, "attributes": attributes, "min_count": min_count, "n_boot": n_boot}
                settings |= {"groups": self.s.get("groups", "cardiac"), "seed": seed}
                self.steps.append(Step(name, _plain(settings), action, upstream=[src]))

    def thresholds(self, out: Path, src: Path, attributes, min_count: int, n_boot: int, seed: int) -> Any:
        import numpy as np

        from fairmonai.engines import classification as cls
        from fairmonai.engines.results import write_json
        from fairmonai.pipeline import thresholds as th

        levels = cls.group_levels(self.s.get("groups", "cardiac"))
        attrs = list(attributes) if attributes else list(levels)
        val = _read_csv(src / "validation_predictions.csv")
        test = _read_csv(src / "test_predictions.csv")
        if not val or not test:
            raise RuntimeError(f"no predictions in {src} (validation {len(val)}, test {len(test)} rows)")
        for rows, split in ((val, "validation"), (test, "test")):
            missing = [a for a in attrs if a not in rows[0]]
            if missing:
                raise InputError(
                    f"threshold attributes {missing} are not columns of the {split} predictions ({sorted(rows[0])})",
                    path=src / f"{split}_predictions.csv",
                    field=missing[0],
                )
        columns = {a: [r[a] for r in val] for a in attrs}
        table = th.choose_thresholds(
            [int(r["label"]) for r in val],
            [float(r["probability"]) for r in val],
            th.group_keys(columns, attrs),
            min_count=min_count,
        )
        test_groups = th.group_keys({a: [r[a] for r in test] for a in attrs}, attrs)
        t = [th.threshold_for(table, g) for g in test_groups]
        prob = th.recalibrate([float(r["probability"]) for r in test], t)
        y = np.asarray([int(r["label"]) for r in test])
        level_columns = [c for c in test[0] if c in levels]
        groups = {a: [r[a] for r in test] for a in level_columns}
        result = cls.classification_table(
            y, prob, groups, num_classes=2, levels=levels, n_boot=n_boot, random_state=seed
        )
        info = {
            "split": "test",
            "thresholds": "per-group thresholds chosen on the validation split (fairmonai.pipeline.thresholds)",
            "source": _rel(src, self.run_dir),
            "attributes": attrs,
        }
        cls.write_metrics_json(result, out / "test_metrics.json", info)
        cls.write_group_csv(result, out / "test_per_group.csv")
        predictions = [
            {**r, "threshold": tt, "recalibrated_probability": float(pp), "predicted": int(float(pp) > 0.5)}
            for r, tt, pp in zip(test, t, prob, strict=True)
        ]
        from fairmonai.engines.results import write_rows_csv

        write_rows_csv(predictions, out / "test_predictions.csv")
        write_json({**table, "attributes": attrs, "source": info["source"]}, out / "thresholds.json")
        return {"global": table["global"], "groups": len(table["thresholds"])}

    # ------------------------------------------------------------------------------------------ aggregate
    def report(self, runner: StepRunner) -> dict[str, Any]:
        cohort = self.cohort()
        spec = cohort.spec
        splits = {split: cohort.split(split) for split in ("training", "validation", "test")}
        synthetic_counts: dict[str, int] = {}
        synthesis = None
        final = "filter" if "filter" in runner.results else "synthesis"
        if "synthesis" in runner.results:
            manifest = self.run_dir / final / "synthetic.csv"
            from fairmonai.cohort import Cohort

            synth = Cohort.from_manifest(manifest, spec, check_files=False)
            synthetic_counts = {spec.name(k): int(v) for k, v in synth.counts().items() if v}
            filter_info = runner.results["filter"].result if "filter" in runner.results else None
            synthesis = {"manifest": _rel(manifest, self.run_dir), "counts": synthetic_counts, "filter": filter_info}
        all_keys = list(splits["training"].counts())
        for split in splits.values():
            all_keys += [k for k in split.counts() if k not in all_keys]
        groups = []
        for key in all_keys:
            name = spec.name(key)
            row = {"group": name}
            row |= {s: int(c.counts().get(key, 0)) for s, c in splits.items()}
            row["synthetic"] = int(synthetic_counts.get(name, 0))
            groups.append(row)
        generator = None
        stages = [n for n in runner.results if n.startswith("generator/") and n != "generator/eval"]
        if stages:
            generator = {
                "bundle": Path(str(self.s["generator_bundle"])).name,
                "histories": {n.split("/", 1)[1]: _history(self.run_dir / n / "history.json", "loss") for n in stages},
                "metrics": None,
                "grid_png": None,
            }
            if "generator/eval" in runner.results:
                folder = self.run_dir / "generator" / "eval"
                if (folder / "generation_metrics.json").is_file():
                    generator["metrics"] = _read_json(folder / "generation_metrics.json").get("metrics")
                if (folder / "generation_grid.png").is_file():
                    generator["grid_png"] = _rel(folder / "generation_grid.png", self.run_dir)
        arms = []
        attributes: list[str] | None = None
        for arm_name, arm in self.arms.items():
            runs = []
            for seed in self.seeds:
                if arm.get("kind") == "thresholds":
                    metrics_file = self.run_dir / f"arms/{arm_name}/seed{seed}/test_metrics.json"
                    train = f"arms/{arm.get('source', 'real')}/seed{seed}/train"
                else:
                    metrics_file = self.run_dir / f"arms/{arm_name}/seed{seed}/eval/test_metrics.json"
                    train = f"arms/{arm_name}/seed{seed}/train"
                table = _read_json(metrics_file)
                runs.append(
                    {
                        "seed": seed,
                        "test_metrics": _rel(metrics_file, self.run_dir),
                        "table": table,
                        "history": _history(self.run_dir / train / "history.json", metrics=HISTORY_METRICS),
                    }
                )
            if attributes is None and runs:
                attributes = list(runs[0]["table"].get("attributes", {}))
            arms.append(
                aggregate.arm_summary(
                    arm_name,
                    runs,
                    label=arm.get("label"),
                    description=arm.get("description", ""),
                    baseline=not arm.get("synthetic", False),
                    attributes=attributes,
                )
            )
        n_boot = int(self.s.get("n_boot", 1000))
        audit_html = self.run_dir / "audit" / "audit.html"
        return {
            "schema": aggregate.SCHEMA,
            "title": self.s.get("title") or f"fairness pipeline: {self.manifest_file.parent.name or 'cohort'}",
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "settings": _plain(self.s),
            "versions": _versions(),
            "machine": _machine(str(self.s.get("device") or "cpu")),
            "steps": runner.steps_json(),
            "cohort": {
                "manifest": str(self.s.get("manifest") or _rel(self.manifest_file, self.run_dir)),
                "splits": {s: len(c) for s, c in splits.items()},
                "audit_html": _rel(audit_html, self.run_dir) if audit_html.is_file() else None,
                "groups": groups,
            },
            "generator": generator,
            "synthesis": synthesis,
            "metrics": list(aggregate.GROUP_METRICS),
            "fairness_metrics": list(aggregate.FAIRNESS_METRICS),
            "attributes": attributes or [],
            "arms": arms,
            "interval_note": (
                f"95 % bootstrap intervals ({n_boot} resamples within each group), averaged over seeds"
                if n_boot
                else "no bootstrap intervals (n_boot 0)"
            ),
        }

    # ------------------------------------------------------------------------------------------------ run
    def build(self) -> None:
        if self.barrier is not None:  # the built-in cohort is written once, by process 0
            if self.rank == 0:
                self.manifest()
            self.barrier()
        self.manifest_file = self.manifest()
        from fairmonai.io.mapping import mapping_inputs

        # a YAML mapping's records come from the team's table too: editing it must rerun what reads the cohort
        self.manifest_inputs = mapping_inputs(self.manifest_file)
        if self.s.get("audit", True):
            self.add_audit()
        synthetic_step = self.add_generator() if self.needs_synthetic else None
        self.add_arms(synthetic_step)
        self.add_threshold_arms()

    def run(self) -> dict[str, Any]:
        start = time.perf_counter()
        self.build()
        runner = StepRunner(self.run_dir, total=len(self.steps) + 1, stream=self.stream, barrier=self.barrier)
        for step in self.steps:
            runner.run(step)
        done = [s.name for s in self.steps]

        def write(out: Any) -> Any:
            report = self.report(runner)
            return _rel(aggregate.write_report(self.run_dir, report), self.run_dir)

        # report.json sits in the run folder itself, so its step has no folder of its own
        # keyed by every setting: report.json shows them verbatim (and rewriting it takes a fraction of a second)
        shown = _plain({k: v for k, v in self.s.items() if k not in NOT_IN_KEYS})
        runner.run(Step("report", shown, write, upstream=done, out=None))
        report_json = self.run_dir / "report.json"
        if not report_json.is_file() and self.rank == 0:  # deleted after it was written: rebuild it
            aggregate.write_report(self.run_dir, self.report(runner))
        html = None
        if self.s.get("report", True) and self.rank == 0:
            html = render(self.run_dir, self.stream)
        seconds = time.perf_counter() - start
        return {
            "run_dir": self.run_dir,
            "report_json": report_json,
            "report_html": html,
            "steps": runner.steps_json(),
            "seconds": seconds,
        }


def render(run_dir: Path, stream: Any = None) -> Path | None:
    """``fairmonai.report.pipeline.render_report(run_dir)`` when that module is installed, else None."""
    try:
        from fairmonai.report.pipeline import render_report
    except ImportError as exc:
        if stream is not None:
            print(f"report.html not written: fairmonai.report.pipeline is not importable ({exc})", file=stream)
        return None
    return Path(render_report(run_dir))


def pipeline_steps(settings: Mapping[str, Any]) -> list[str]:
    """Names of the steps ``settings`` make, in run order (nothing is run; the built-in cohort may be written)."""
    pipeline = _Pipeline(settings, stream=None)
    pipeline.build()
    return [s.name for s in pipeline.steps] + ["report"]


def _show_each_warning_once() -> None:
    """Every bundle run reads the cohort and warns about it again; show each distinct message once.

    (A filter action ``once`` does not survive the bundles' own ``catch_warnings`` blocks; ``showwarning``,
    which they restore, does.) Call inside ``warnings.catch_warnings()``, which restores the original.
    """
    seen: set[tuple[str, type]] = set()
    show = warnings.showwarning

    def once(message, category, filename, lineno, file=None, line=None):
        key = (str(message), category)
        if key not in seen:
            seen.add(key)
            show(message, category, filename, lineno, file, line)

    warnings.showwarning = once


def run_pipeline(settings: Mapping[str, Any], stream: Any = "stdout") -> dict[str, Any]:
    """Run (or resume) the pipeline of ``settings`` (the top-level keys of ``configs/pipeline.yaml``).

    Prints one line per step (running / ran in N s / skipped) to ``stream`` (None: silent); the bundles
    show their own progress bars when ``settings["progress"]``.

    Returns:
        ``{"run_dir", "report_json", "report_html" (None when not rendered), "steps" (name, key, status,
        seconds of every step), "seconds"}``.
    """
    import torch

    threads = torch.get_num_threads()
    if settings.get("num_threads"):
        # small networks on a shared CPU: one thread each avoids oversubscription, which made a 32 px
        # autoencoder step 40x slower on the project's 2-core machine while other jobs ran
        torch.set_num_threads(int(settings["num_threads"]))
    try:
        with warnings.catch_warnings():
            _show_each_warning_once()
            return _Pipeline(settings, stream=stream).run()
    finally:
        torch.set_num_threads(threads)


#: the pipeline bundle of this repository
BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "fairness_pipeline"


def load_settings(
    preset: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    bundle: str | os.PathLike = BUNDLE,
) -> dict[str, Any]:
    """The resolved ``settings`` of ``configs/pipeline.yaml`` with a preset overlay (``demo``, ``gpu``, a config
    file, or None / ``none``) and top-level overrides, as ``monai.bundle run`` would resolve them."""
    from monai.bundle import ConfigParser

    configs = [Path(bundle) / "configs" / "pipeline.yaml"]
    if preset not in (None, "", "none"):
        overlay = Path(preset) if Path(str(preset)).is_file() else Path(bundle) / "configs" / f"{preset}.yaml"
        if not overlay.is_file():
            raise InputError(f"no pipeline preset {preset!r} (looked for {overlay})", path=overlay, field="preset")
        configs.append(overlay)
    parser = ConfigParser()
    parser.read_config([str(c) for c in configs])
    keys = set(parser.config)
    unknown = sorted(k for k in (overrides or {}) if k not in keys)
    if unknown:
        raise InputError(f"{unknown} are not settings of {configs[0]}", path=configs[0], field=unknown[0])
    parser.update({"bundle_root": str(Path(bundle).resolve()), **dict(overrides or {})})
    return parser.get_parsed_content("settings")


def render_available() -> bool:
    """Whether ``fairmonai.report.pipeline`` (``render_report``) is importable here."""
    import importlib.util

    try:
        return importlib.util.find_spec("fairmonai.report.pipeline") is not None
    except ImportError:
        return False
