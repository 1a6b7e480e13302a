"""The files one generator stage hands the next: the scheduler record rebuilds the very schedule trained with."""

import json

import pytest
import torch
from monai.networks.schedulers import DDPMScheduler

from fairmonai.errors import InputError
from fairmonai.generators.stages import (
    MissingWeightsError,
    recorded_train_scheduler,
    require_file,
    write_scheduler_record,
)


@pytest.mark.parametrize("schedule", ["linear_beta", "scaled_linear_beta"])
def test_the_record_rebuilds_the_training_schedule(tmp_path, schedule):
    record = tmp_path / "diffusion_scheduler.json"
    write_scheduler_record(record, 200, "v_prediction", schedule=schedule, beta_start=2e-4, beta_end=0.03)
    rebuilt = recorded_train_scheduler(record)
    trained = DDPMScheduler(num_train_timesteps=200, schedule=schedule, beta_start=2e-4, beta_end=0.03)
    assert rebuilt.prediction_type == "v_prediction" and rebuilt.num_train_timesteps == 200
    assert torch.allclose(rebuilt.alphas_cumprod, trained.alphas_cumprod)
    assert rebuilt.clip_sample is False


def test_a_record_without_betas_means_the_scaled_linear_default(tmp_path):
    record = tmp_path / "old.json"
    record.write_text(json.dumps({"num_train_timesteps": 1000, "prediction_type": "epsilon"}))
    default = DDPMScheduler(num_train_timesteps=1000, schedule="scaled_linear_beta", beta_start=0.0015, beta_end=0.0195)
    assert torch.allclose(recorded_train_scheduler(record).alphas_cumprod, default.alphas_cumprod)


def test_a_contradicting_setting_names_both_values(tmp_path):
    record = tmp_path / "diffusion_scheduler.json"
    write_scheduler_record(record, 1000, "epsilon", schedule="linear_beta")
    with pytest.raises(InputError, match="prediction_type is 'v_prediction' but the diffusion model was trained with"):
        recorded_train_scheduler(record, prediction_type="v_prediction")


def test_missing_weights_name_the_file_and_the_config(tmp_path):
    with pytest.raises(MissingWeightsError, match="run configs/train_x.yaml first") as info:
        require_file(tmp_path / "x.pt", "x checkpoint", "run configs/train_x.yaml first", "x_path")
    assert "x.pt" in str(info.value)
