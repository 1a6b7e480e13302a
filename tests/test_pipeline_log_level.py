"""``run_bundle(log_level="WARNING")`` silences MONAI's per-iteration lines, which bypass the root logger."""

from __future__ import annotations

import logging
from pathlib import Path

from monai.apps import get_logger

from fairmonai.phantoms import make_phantom
from fairmonai.pipeline.bundles import quiet_private_handlers, run_bundle

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "cardiac_cine_ldm"


def test_quiet_private_handlers_raises_non_propagating_handlers():
    logger = get_logger("TestQuietHandler")  # own StreamHandler, propagate=False, as StatsHandler's
    assert not logger.propagate and logger.handlers
    quiet_private_handlers("WARNING")
    assert all(h.level == logging.WARNING for h in logger.handlers)
    assert logger.getEffectiveLevel() <= logging.INFO  # the logger itself still takes INFO records


def test_run_bundle_warning_level_prints_no_info_lines(tmp_path, capfd):
    manifest = make_phantom("cardiac", tmp_path / "phantom", subjects=16, seed=0)
    overrides = {
        "manifest": str(manifest),
        "image_size": 32,
        "model_dir": str(tmp_path / "models"),
        "output_dir": str(tmp_path / "eval"),
        "autoencoder_options": {"channels": [8, 16, 16], "norm_num_groups": 8},
        "epochs": 1,
        "epoch_length": 2,
        "batch_size": 4,
        "progress": False,
    }
    capfd.readouterr()
    run_bundle(BUNDLE, ["train_autoencoder.yaml"], overrides, log_level="WARNING")
    out = capfd.readouterr()
    assert (tmp_path / "models" / "autoencoder.pt").is_file()
    assert " - INFO - " not in out.out + out.err
