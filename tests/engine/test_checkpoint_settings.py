"""``--ckpt_path`` settings: the checkpoint decides the architecture, the command line the evaluation."""

from __future__ import annotations

import pytest

from spectralmoe.engine.checkpoint_settings import (
    BUILD_SETTINGS,
    CheckpointSettingError,
    merge_checkpoint_settings,
    task_defaults,
)
from spectralmoe.engine.task import SegmentationTask

DEFAULTS = task_defaults(SegmentationTask)
STORED = {**DEFAULTS, "backbone": "tiny-dinov3", "adapter_options": {"rank": 4}, "num_classes": 3,
          "wavelengths": [0.49, 0.56, 0.665, 0.83], "eval_mode": "slide", "eval_crop": 256,
          "metrics_dir": "/old/run", "lr": 1e-3, "betas": [0.9, 0.999], "palette": [[1, 2, 3]] * 3}  # fmt: skip


def test_not_given_takes_the_checkpoint_given_evaluation_flags_apply():
    merged, applied = merge_checkpoint_settings(dict(DEFAULTS), STORED, DEFAULTS)
    assert merged["backbone"] == "tiny-dinov3" and merged["num_classes"] == 3 and merged["adapter_options"] == {"rank": 4}
    assert (merged["eval_mode"], merged["eval_crop"]) == ("slide", 256) and applied == []  # the training run's choice
    assert merged["metrics_dir"] is None  # run-local: never the training run's folder
    given = {**DEFAULTS, "eval_mode": "whole", "eval_crop": 128, "band_wavelengths": "data"}
    merged, applied = merge_checkpoint_settings(given, STORED, DEFAULTS)
    # eval_mode "whole" is the default: indistinguishable from "not given" (documented); eval_crop applies
    assert merged["eval_mode"] == "slide" and merged["eval_crop"] == 128 and merged["band_wavelengths"] == "data"
    assert applied == ["--model.band_wavelengths 'data' (the checkpoint had 'model')",
                       "--model.eval_crop 128 (the checkpoint had 256)"]


def test_the_same_build_value_is_fine_another_is_refused():
    same = {**DEFAULTS, "backbone": "tiny-dinov3", "wavelengths": (0.49000001, 0.56, 0.665, 0.83), "betas": (0.9, 0.999)}
    merged, _ = merge_checkpoint_settings(same, STORED, DEFAULTS)
    assert merged["backbone"] == "tiny-dinov3"
    # without the record of explicit keys, a value equal to the default counts as not given
    merged, _ = merge_checkpoint_settings({**DEFAULTS, "backbone": "dinov3-vitl16"}, STORED, DEFAULTS)
    assert merged["backbone"] == "tiny-dinov3"
    with pytest.raises(CheckpointSettingError, match=r"--model.adapter: .*'spectralmoe', not 'rein'.*"
                                                     r"--model.num_classes: .*3, not 5"):  # fmt: skip
        merge_checkpoint_settings({**DEFAULTS, "adapter": "rein", "num_classes": 5}, STORED, DEFAULTS)
    assert {"backbone", "adapter", "head", "wavelengths", "pixel_mean"} <= set(BUILD_SETTINGS)


def test_explicit_keys_decide_what_was_given():
    """With the record of what the command line and config files set, a value equal to the default still
    counts (``--model.eval_mode whole`` tests whole tiles a slide-trained model), and an architecture
    flag equal to the default that contradicts the checkpoint is refused; ``None`` data facts are not given."""
    given = {**DEFAULTS, "eval_mode": "whole", "palette": None}
    merged, applied = merge_checkpoint_settings(given, STORED, DEFAULTS,
                                                explicit={"eval_mode", "num_classes", "palette"})  # fmt: skip
    assert merged["eval_mode"] == "whole" and merged["eval_crop"] == 256 and merged["num_classes"] == 3
    assert merged["palette"] == STORED["palette"]  # an explicit null (config.yaml) is "unset", not applied
    assert applied == ["--model.eval_mode 'whole' (the checkpoint had 'slide')"]
    with pytest.raises(CheckpointSettingError, match=r"--model.backbone: .*'tiny-dinov3', not 'dinov3-vitl16'"):
        merge_checkpoint_settings(dict(DEFAULTS), STORED, DEFAULTS, explicit={"backbone"})
