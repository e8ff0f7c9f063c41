"""Which ``model:`` settings a checkpoint decides and which the command line may change.

``spectralmoe test|validate|predict|fit --ckpt_path X`` rebuilds the model from the task's arguments
stored in X. Lightning's CLI used to let those stored values overwrite every ``--model.*`` flag,
so ``test --ckpt_path X --model.eval_mode slide`` silently ran whole-tile inference. The rule here:

* **Architecture and data facts** (``BUILD_SETTINGS``: backbone, adapter, head and their options,
  classes, band wavelengths, normalisation…) come from the checkpoint: they define the trained
  weights. A flag that sets one of them to ANOTHER value is refused with a message naming it —
  never dropped, never applied to weights that cannot follow it.
* **Run-local settings** (``RUN_LOCAL_SETTINGS``: where this run writes its metrics) are this
  command's own, never inherited from the training run.
* **Everything else** (evaluation: ``eval_mode``, ``eval_crop``, ``eval_stride``,
  ``band_wavelengths``; weight locations; optimiser settings of a resumed fit): a value given on
  the command line or in a config file wins; a value left at its default takes the checkpoint's.

"Given" means: set on the command line or in a ``-c`` config file (the CLI parses the arguments a
second time without defaults to know which). Without that record (a config passed as a Python dict),
a value different from ``SegmentationTask``'s default counts as given. An explicit ``None`` never
counts as given for an architecture setting or a setting whose default is ``None`` (the data facts
are ``None`` until the data fills them, and a run's ``config.yaml`` lists every key).
"""

from __future__ import annotations

import inspect
import json
import math
from typing import Any, Callable, Mapping

from spectralmoe.errors import InputError

__all__ = ["BUILD_SETTINGS", "RUN_LOCAL_SETTINGS", "CheckpointSettingError", "merge_checkpoint_settings"]

#: Settings that define the trained weights: they cannot change after training.
BUILD_SETTINGS: tuple[str, ...] = (
    "architecture", "backbone", "adapter", "head", "depth", "adapter_options", "head_options", "backbone_options",
    "num_classes", "class_names", "wavelengths", "in_bandwidths", "gsd_m", "pixel_mean", "pixel_std", "value_scale",
    "depth_input", "kernel_resize", "out_indices",
)  # fmt: skip
#: Settings of this run only (never taken from the checkpoint).
RUN_LOCAL_SETTINGS: tuple[str, ...] = ("metrics_dir",)


class CheckpointSettingError(InputError):
    """A ``--model.*`` value contradicts what the checkpoint's weights were trained with."""


def _canonical(value: Any) -> Any:
    """Comparable form: tuples → lists, floats rounded (wavelengths stored as float32 round-trips)."""
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, float):
        return "nan" if math.isnan(value) else round(value, 5)
    return value


def _same(a: Any, b: Any) -> bool:
    return json.dumps(_canonical(a), sort_keys=True, default=str) == json.dumps(_canonical(b), sort_keys=True,
                                                                               default=str)  # fmt: skip


def task_defaults(task_class: Callable[..., Any]) -> dict[str, Any]:
    """The constructor defaults of the task class (what "not given" looks like)."""
    return {
        name: p.default
        for name, p in inspect.signature(task_class.__init__).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def merge_checkpoint_settings(
    given: Mapping[str, Any], stored: Mapping[str, Any], defaults: Mapping[str, Any], *, checkpoint: str = "checkpoint",
    explicit: set[str] | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """The ``model:`` settings to run with, and a note per setting taken from the command line.

    ``given``: this command's ``model:`` settings (defaults filled in); ``stored``: the checkpoint's
    ``hyper_parameters``; ``defaults``: the task class's constructor defaults; ``explicit``: the keys set
    on the command line or in a config file (``None``: unknown, then "differs from the default").
    Raises ``CheckpointSettingError`` listing every build setting given with another value than the
    checkpoint's."""
    merged: dict[str, Any] = {}
    conflicts: list[str] = []
    applied: list[str] = []
    for key in sorted(set(given) | set(stored)):
        if key not in defaults and key not in given:
            continue  # a stored key the task no longer has
        here, there = given.get(key, defaults.get(key)), stored.get(key, defaults.get(key))
        if explicit is not None:
            # an explicit null of a setting whose default is null means "unset" (a run's config.yaml lists all)
            unset = here is None and (key in BUILD_SETTINGS or defaults.get(key) is None)
            is_given = key in explicit and key in given and not unset
        else:
            is_given = key in given and not _same(here, defaults.get(key))
        if key in RUN_LOCAL_SETTINGS:
            merged[key] = here
        elif key in BUILD_SETTINGS:
            if key in stored and is_given and not _same(here, there):
                conflicts.append(f"--model.{key}: the checkpoint was trained with {there!r}, not {here!r}")
            merged[key] = there if key in stored else here
        elif is_given:
            merged[key] = here
            if key in stored and not _same(here, there):
                applied.append(f"--model.{key} {here!r} (the checkpoint had {there!r})")
        else:
            merged[key] = there
    if conflicts:
        raise CheckpointSettingError(
            f"{checkpoint}: these settings define the trained weights and cannot change after training — "
            + "; ".join(conflicts)
            + ". Drop them (the checkpoint's values are used) or train a new model."
        )
    return merged, applied
