"""The sampling benchmark's solver labels and its paired FID bootstrap (bench/bench_sampling.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import bench_sampling  # noqa: E402

from fairmonai.metrics.synthesis import fid  # noqa: E402


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        ("ddpm-1000", ("ddpm", 1000, {})),
        ("ddim-50", ("ddim", 50, {})),
        ("dpmsolver++-20", ("dpmsolver++", 20, {})),
        ("dpmsolver++-20-karras", ("dpmsolver++", 20, {"use_karras_sigmas": True})),
        ("sde-dpmsolver++-25", ("dpmsolver++", 25, {"algorithm_type": "sde-dpmsolver++"})),
    ],
)
def test_solver_labels(label, expected):
    assert bench_sampling.parse_solver(label) == expected


@pytest.mark.parametrize("label", ["dpmsolver++", "euler-20", "ddim-50-karras", "ddpm-x"])
def test_bad_solver_label_is_named(label):
    with pytest.raises(ValueError, match=label.replace("+", r"\+")):
        bench_sampling.parse_solver(label)


def test_paired_bootstrap_matches_fid_and_brackets_it():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(120, 6))
    near = rng.normal(size=(60, 6))
    far = rng.normal(loc=0.8, size=(60, 6))
    point = [fid(real, near), fid(real, far)]
    out = bench_sampling.paired_fid_bootstrap(real, [near, far], 0, 300, 0, point)
    assert [o["bootstrap"] for o in out] == [300, 300]
    # the reference's ratio to itself is exactly 1 in every resample
    assert out[0]["fid_rel_to_ddpm_ci95"] == [1.0, 1.0]
    lo, hi = out[1]["fid_ci95"]
    assert lo < point[1] < hi
    rlo, rhi = out[1]["fid_rel_to_ddpm_ci95"]
    assert rlo > 1.0  # the shifted set is worse in (almost) every paired resample
    with pytest.raises(RuntimeError, match="disagrees"):
        bench_sampling.paired_fid_bootstrap(real, [near], 0, 10, 0, [point[0] + 1.0])


def test_fid_solvers_without_the_compared_pair_fail_before_sampling(capsys):
    with pytest.raises(SystemExit):
        bench_sampling.parse_args(["--generator", "models", "--fid-solvers", "ddim-50,sde-dpmsolver++-20"])
    assert "ddpm-1000" in capsys.readouterr().err
    args = bench_sampling.parse_args(["--generator", "models", "--fid-solvers", "ddpm-1000,dpmsolver++-20"])
    assert args.fid_solvers == ["ddpm-1000", "dpmsolver++-20"]
