"""fairmonai.bundle_check: a minimal valid bundle passes, and each defect is reported where it is."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from fairmonai import bundle_check
from fairmonai.bundle_check import verify_bundle

SCHEMA_URL = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"


def tensor_format(**overrides: Any) -> dict[str, Any]:
    entry = {
        "type": "image",
        "format": "magnitude",
        "modality": "MR",
        "num_channels": 1,
        "spatial_shape": [64, 64],
        "dtype": "float32",
        "value_range": [0, 1],
        "is_patch_data": False,
        "channel_def": {"0": "image"},
    }
    entry.update(overrides)
    return entry


def valid_metadata() -> dict[str, Any]:
    return {
        "schema": SCHEMA_URL,
        "version": "0.2.0",
        "changelog": {"0.2.0": "fairness sampler", "0.1.0": "initial version"},
        "monai_version": "1.6.1",
        "pytorch_version": "2.13.0",
        "numpy_version": "2.4.6",
        "required_packages_version": {"fairmonai": "0.1.0"},
        "task": "Heart-failure classification from cine MR",
        "description": "A tiny test bundle.",
        "authors": "fairmonai developers",
        "copyright": "Copyright (c) fairmonai developers",
        "network_data_format": {
            "inputs": {"image": tensor_format()},
            "outputs": {"pred": tensor_format(type="probabilities", format="classification", channel_def={})},
        },
        "intended_use": "Testing only",
        "references": ["Skorupko et al."],
    }


def valid_inference_config() -> dict[str, Any]:
    return {
        "imports": ["$import glob"],
        "bundle_root": ".",
        "groups": [["F"], ["F"], ["M"]],
        "network": {"_target_": "torch.nn.Identity"},  # dotted path
        "preprocessing": {  # MONAI short names, resolved by MONAI's ComponentLocator
            "_target_": "Compose",
            "transforms": [{"_target_": "ScaleIntensityd", "keys": "image"}],
        },
        "postprocess": {"_target_": "scripts.helpers.threshold", "level": 0.5},  # bundle's own scripts/
        "computed": {"_target_": "$torch.nn.Identity"},  # an expression: not checked statically
        "sampler": {"_target_": "fairmonai.registry.create", "kind": "sampler", "name": "sqrs", "groups": "@groups"},
        "run": ["$print(@network)"],
    }


def make_bundle(root: Path, metadata: dict | None = None, model: bool = True) -> Path:
    """Write a minimal bundle that passes every check (no warnings either)."""
    (root / "configs").mkdir(parents=True)
    (root / "docs").mkdir()
    (root / "scripts").mkdir()
    (root / "LICENSE").write_text("Apache License 2.0\n")
    (root / "docs" / "README.md").write_text("# test bundle\n")
    (root / "scripts" / "__init__.py").write_text("")
    (root / "scripts" / "helpers.py").write_text("def threshold(x, level=0.5):\n    return x > level\n")
    metadata = valid_metadata() if metadata is None else metadata
    if model:
        (root / "models").mkdir()
        torch.save({"weight": torch.arange(4.0)}, root / "models" / "model.pt")
        metadata["checksums"] = {"models/model.pt": sha256(root / "models" / "model.pt")}
    write_json(root / "configs" / "metadata.json", metadata)
    write_yaml(root / "configs" / "inference.yaml", valid_inference_config())
    return root


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_json(path: Path, content: Any) -> None:
    path.write_text(json.dumps(content, indent=2))


def write_yaml(path: Path, content: Any) -> None:
    path.write_text(yaml.safe_dump(content, sort_keys=False))


def update_metadata(root: Path, **changes: Any) -> None:
    meta_path = root / "configs" / "metadata.json"
    metadata = json.loads(meta_path.read_text())
    for key, value in changes.items():
        if value is None:
            metadata.pop(key)
        else:
            metadata[key] = value
    write_json(meta_path, metadata)


def messages(report: bundle_check.BundleReport, severity: str = "error") -> list[str]:
    return [str(p) for p in report.problems if p.severity == severity]


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return make_bundle(tmp_path / "bundle")


def test_valid_bundle_passes(bundle: Path) -> None:
    report = verify_bundle(bundle)
    assert report.ok, report.format()
    assert report.problems == [], report.format()
    # the schema is never downloaded: the report says it was skipped
    assert any("not checked" in str(n) and SCHEMA_URL in str(n) for n in report.notes)
    assert "scripts" not in sys.modules and str(bundle.resolve()) not in sys.path  # no trace left


def test_missing_license(bundle: Path) -> None:
    (bundle / "LICENSE").unlink()
    report = verify_bundle(bundle)
    assert not report.ok
    assert [p.file for p in report.errors] == ["LICENSE"]


def test_missing_metadata_file(bundle: Path) -> None:
    (bundle / "configs" / "metadata.json").unlink()
    report = verify_bundle(bundle)
    assert any(p.file == "configs/metadata.json" and "missing" in p.message for p in report.errors)


def test_metadata_not_json(bundle: Path) -> None:
    (bundle / "configs" / "metadata.json").write_text('{"version": "0.2.0",}')
    report = verify_bundle(bundle)
    assert any("not valid JSON" in m for m in messages(report))


def test_missing_metadata_key(bundle: Path) -> None:
    update_metadata(bundle, intended_use=None)
    report = verify_bundle(bundle)
    assert messages(report) == ["ERROR configs/metadata.json: missing required key 'intended_use'"]


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("references", "Skorupko et al.", "references must be a list, got a string"),
        ("changelog", ["0.2.0"], "changelog must be an object, got a list"),
        ("authors", 3, "authors must be a string, got an integer"),
    ],
)
def test_wrong_metadata_type(bundle: Path, key: str, value: Any, expected: str) -> None:
    update_metadata(bundle, **{key: value})
    report = verify_bundle(bundle)
    assert any(expected in m for m in messages(report)), report.format()


def test_version_not_in_changelog(bundle: Path) -> None:
    update_metadata(bundle, version="0.3.0")
    report = verify_bundle(bundle)
    assert any("'0.3.0' is not listed in the changelog" in m for m in messages(report))


def test_version_not_semver(bundle: Path) -> None:
    update_metadata(bundle, version="v2", changelog={"v2": "renamed"})
    report = verify_bundle(bundle)
    assert any("not of the form MAJOR.MINOR.PATCH" in m for m in messages(report))


def test_missing_network_data_format_subkey(bundle: Path) -> None:
    ndf = valid_metadata()["network_data_format"]
    del ndf["inputs"]["image"]["dtype"]
    ndf["outputs"]["pred"]["is_patch_data"] = "no"
    update_metadata(bundle, network_data_format=ndf)
    report = verify_bundle(bundle)
    errors = messages(report)
    assert "ERROR configs/metadata.json: missing required key network_data_format.inputs.image.dtype" in errors
    assert any("network_data_format.outputs.pred.is_patch_data must be a boolean" in m for m in errors)
    assert len(errors) == 2


def test_config_that_does_not_parse(bundle: Path) -> None:
    (bundle / "configs" / "evaluate.yaml").write_text("network:\n  _target_: torch.nn.Identity\n bad: [\n")
    report = verify_bundle(bundle)
    (error,) = report.errors
    assert error.file == "configs/evaluate.yaml"
    assert "does not parse" in error.message


def test_unresolved_target(bundle: Path) -> None:
    config = valid_inference_config()
    config["network"] = {"_target_": "monai.networks.nets.NoSuchNet", "spatial_dims": 2}
    config["helper"] = {"_target_": "scripts.helpers.no_such_function"}
    write_yaml(bundle / "configs" / "inference.yaml", config)
    report = verify_bundle(bundle)
    errors = messages(report)
    assert len(errors) == 2, report.format()
    assert all(m.startswith("ERROR configs/inference.yaml: ") for m in errors)
    assert "monai.networks.nets.NoSuchNet" in errors[0] and "'network'" in errors[0]
    assert "scripts.helpers.no_such_function" in errors[1]


def test_target_whose_module_fails_to_import(bundle: Path) -> None:
    (bundle / "scripts" / "broken.py").write_text("raise RuntimeError('needs a GPU library')\n")
    config = valid_inference_config()
    config["net"] = {"_target_": "scripts.broken.Net"}
    write_yaml(bundle / "configs" / "inference.yaml", config)
    report = verify_bundle(bundle)
    assert any("cannot be imported" in m and "needs a GPU library" in m for m in messages(report))


def test_unknown_plugin_name(bundle: Path) -> None:
    config = valid_inference_config()
    config["sampler"]["name"] = "sqr"
    write_yaml(bundle / "configs" / "inference.yaml", config)
    report = verify_bundle(bundle)
    (error,) = report.errors
    assert error.file == "configs/inference.yaml"
    assert "no sampler plugin named 'sqr'" in error.message and "Closest match: 'sqrs'" in error.message


def test_unknown_plugin_kind(bundle: Path) -> None:
    config = valid_inference_config()
    config["sampler"]["kind"] = "samplers"
    write_yaml(bundle / "configs" / "inference.yaml", config)
    report = verify_bundle(bundle)
    assert any("unknown plugin kind 'samplers'" in m for m in messages(report))


def test_checksum_mismatch(bundle: Path) -> None:
    torch.save({"weight": torch.zeros(4)}, bundle / "models" / "model.pt")  # retrained, metadata not updated
    report = verify_bundle(bundle)
    (error,) = report.errors
    assert error.file == "models/model.pt" and "sha256 mismatch" in error.message


def test_monai_model_checksum_md5(tmp_path: Path) -> None:
    root = make_bundle(tmp_path / "b", model=False)
    (root / "models").mkdir()
    torch.save({"w": torch.ones(2)}, root / "models" / "model.pt")
    good = hashlib.md5((root / "models" / "model.pt").read_bytes()).hexdigest()
    update_metadata(root, model_checksum=good)
    assert verify_bundle(root).problems == []
    update_metadata(root, model_checksum="0" * 32)
    assert any("md5 mismatch" in m for m in messages(verify_bundle(root)))


def test_missing_model_is_a_warning(tmp_path: Path) -> None:
    report = verify_bundle(make_bundle(tmp_path / "b", model=False))
    assert report.ok
    assert [str(p) for p in report.warnings] == [
        "WARNING models/model.pt: not found; models are produced by training and are not committed"
    ]


def test_no_inference_or_train_config(bundle: Path) -> None:
    (bundle / "configs" / "inference.yaml").rename(bundle / "configs" / "evaluate.yaml")
    report = verify_bundle(bundle)
    (error,) = report.errors
    assert error.file == "configs" and "inference" in error.message


def test_missing_readme_is_a_warning(bundle: Path) -> None:
    (bundle / "docs" / "README.md").unlink()
    report = verify_bundle(bundle)
    assert report.ok and [p.file for p in report.warnings] == ["docs/README.md"]


def test_main_prints_report_and_exit_code(bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert bundle_check.main([str(bundle)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"OK: {bundle}"

    (bundle / "LICENSE").unlink()
    update_metadata(bundle, task=None)
    assert bundle_check.main([str(bundle)]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert "ERROR LICENSE: missing; every bundle ships its licence terms in a LICENSE file" in lines
    assert "ERROR configs/metadata.json: missing required key 'task'" in lines
    assert lines[-1] == f"FAILED: 2 error(s) in {bundle}"


def test_not_a_directory(tmp_path: Path) -> None:
    report = verify_bundle(tmp_path / "nowhere")
    assert not report.ok and "not found" in report.errors[0].message


def test_two_bundles_resolve_their_own_scripts(tmp_path: Path) -> None:
    """Each bundle's ``scripts.*`` targets resolve against its own files, not a previously checked bundle's."""
    first = make_bundle(tmp_path / "first")
    second = make_bundle(tmp_path / "second")
    (second / "scripts" / "helpers.py").write_text("def other():\n    return 1\n")  # no `threshold` here
    assert verify_bundle(first).ok
    report = verify_bundle(second)
    assert any("scripts.helpers.threshold" in m for m in messages(report))
    assert verify_bundle(first).ok


def test_non_mapping_json_under_configs_is_a_warning(bundle: Path) -> None:
    write_json(bundle / "configs" / "datalist.json", [{"image": "a.nii.gz"}])
    report = verify_bundle(bundle)
    assert report.ok
    assert [(p.file, p.severity) for p in report.problems] == [("configs/datalist.json", "warning")]


def test_duplicate_config_key_is_a_warning(bundle: Path) -> None:
    text = (bundle / "configs" / "inference.yaml").read_text()
    (bundle / "configs" / "inference.yaml").write_text(text + "bundle_root: /elsewhere\n")
    report = verify_bundle(bundle)
    assert report.ok and any("Duplicate key" in str(p) for p in report.warnings)


def test_local_schema_copy(bundle: Path, tmp_path: Path) -> None:
    schema = tmp_path / "schema.json"
    write_json(schema, {"type": "object", "properties": {"version": {"type": "integer"}}})
    report = verify_bundle(bundle, schema_file=schema)
    try:
        import jsonschema  # noqa: F401
    except ImportError:  # validation needs jsonschema; without it the report says the check was skipped
        assert report.ok and any("jsonschema package is not installed" in str(n) for n in report.notes)
    else:
        assert any("schema" in m and "version" in m for m in messages(report))


# ------------------------------------------------------------------------------------ model files


def test_truncated_model_without_checksum_fails_naming_the_file(tmp_path: Path) -> None:
    root = make_bundle(tmp_path / "b", model=False)
    (root / "models").mkdir()
    torch.save({"weight": torch.arange(1000.0)}, root / "models" / "model.pt")
    assert verify_bundle(root).ok  # an intact checkpoint without a checksum loads and passes
    data = (root / "models" / "model.pt").read_bytes()
    (root / "models" / "model.pt").write_bytes(data[: len(data) // 2])  # an interrupted copy
    report = verify_bundle(root)
    (error,) = report.errors
    assert error.file == "models/model.pt"
    assert "cannot be loaded with torch.load(weights_only=True)" in error.message
    assert "no checksum is recorded" in error.message
    assert "ERROR models/model.pt: cannot be loaded" in report.format()


def test_every_unchecksummed_checkpoint_under_models_is_loaded(bundle: Path) -> None:
    torch.save({"w": torch.ones(8)}, bundle / "models" / "ema.pth")
    assert verify_bundle(bundle).ok
    (bundle / "models" / "ema.pth").write_bytes((bundle / "models" / "ema.pth").read_bytes()[:-40])
    (bundle / "models" / "empty.ckpt").write_bytes(b"")
    report = verify_bundle(bundle)
    assert sorted(e.file for e in report.errors) == ["models/ema.pth", "models/empty.ckpt"]
    assert any("is empty (0 bytes)" in m for m in messages(report))


def test_checkpoint_needing_pickled_code_fails_the_weights_only_load(tmp_path: Path) -> None:
    root = make_bundle(tmp_path / "b", model=False)
    (root / "models").mkdir()
    torch.save({"opt": Path("x")}, root / "models" / "model.pt")  # a pickled class outside the allow-list
    (error,) = verify_bundle(root).errors
    assert error.file == "models/model.pt" and "weights_only" in error.message


# ----------------------------------------------------------------------------------------- static mode


def test_static_mode_does_not_import_the_bundle(bundle: Path) -> None:
    """A scripts module that raises on import (and would leave a marker file) passes the static check."""
    marker = bundle / "imported.txt"
    (bundle / "scripts" / "net.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "raise RuntimeError('bundle code ran at check time')\n\n"
        "class Net:\n    pass\n"
    )
    config = valid_inference_config()
    config["net"] = {"_target_": "scripts.net.Net"}
    write_yaml(bundle / "configs" / "inference.yaml", config)

    report = verify_bundle(bundle, static=True)
    assert report.ok, report.format()
    assert report.problems == []
    assert not marker.exists() and "scripts" not in sys.modules
    assert any("static check" in str(n) for n in report.notes)

    dynamic = verify_bundle(bundle)  # the default mode imports it, as monai.bundle run would
    assert any("bundle code ran at check time" in m for m in messages(dynamic))
    assert marker.exists()


def test_static_mode_still_finds_bad_targets_and_plugins(bundle: Path) -> None:
    config = valid_inference_config()
    config["post"] = {"_target_": "scripts.helpers.thresold"}  # typo, in the bundle's own code
    config["loss"] = {"_target_": "torch.nn.functional.not_a_loss"}
    config["missing"] = {"_target_": "no_such_package_xyz.Thing"}
    config["sampler"]["name"] = "sqr"
    write_yaml(bundle / "configs" / "inference.yaml", config)
    report = verify_bundle(bundle, static=True)
    found = messages(report)
    assert any("'scripts.helpers.thresold'" in m and "scripts/helpers.py" in m and "'thresold'" in m for m in found)
    assert any("no_such_package_xyz" in m and "cannot be located" in m for m in found)
    assert any("no sampler plugin named 'sqr'" in m for m in found)
    # functional.py is plain Python source: a missing name is found by reading it
    assert any("torch.nn.functional.not_a_loss" in m for m in found)
    assert len(report.errors) == 4


def test_static_flag_on_the_command_line(bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fairmonai.cli import main as cli_main

    (bundle / "scripts" / "helpers.py").write_text("raise ImportError('no GPU here')\ndef threshold(x):\n    pass\n")
    assert cli_main(["verify-bundle", "--static", str(bundle)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"OK: {bundle}"
    assert cli_main(["verify-bundle", str(bundle)]) == 1
    assert "no GPU here" in capsys.readouterr().out
