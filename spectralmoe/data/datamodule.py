"""The Lightning DataModule of a DG task: one source training loader, one loader per target domain.

``DGDataModule(root, task)`` reads a prepared benchmark root (``spectralmoe prepare``) and a
``DGTask`` (``benchmarks.py``): it trains on the tiles of split ``"source"`` with the task's
augmentation pipeline, and validates/tests on the tiles of split ``"target"`` split into named
target domains (``task.target_group_by``), whole tiles, one ``DataLoader`` per domain, so metrics
are reported per domain (the order of the loaders is ``target_domains``).

Reproducibility: the training sampler draws its permutation from (seed, epoch) and hands each
dataset item its epoch; the item's transforms run on a generator seeded by
``sample_seed(seed, epoch, index)``. The augmented batch stream therefore depends only on the seed
and the epoch — not on the number of workers or on which worker loads which item. Lightning calls
``set_epoch`` on the sampler; used on its own, the sampler counts epochs itself (each ``iter``
is one epoch). Worker processes also get numpy / ``random`` / torch seeded from the loader's
seeded generator (``seed_worker``) for any third-party randomness.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Sequence

import lightning as L
import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Sampler

from spectralmoe.bands import SENSORS, BandMismatchError, match_bands
from spectralmoe.data.benchmarks import DGTask, load_task
from spectralmoe.data.datasets.prepared import PreparedDataset
from spectralmoe.data.layout import IGNORE_INDEX, PreparedIndex, TileRecord
from spectralmoe.data.validate import TileCheck, ValidationReport, validate_tiles
from spectralmoe.data.transforms import (
    Sample,
    build_eval_transforms,
    build_train_transforms,
    pad_sample,
    sample_seed,
)

__all__ = [
    "DGDataModule",
    "EpochSeededSampler",
    "SeededTransformDataset",
    "TargetGroupDataset",
    "SegCollate",
    "seed_worker",
    "group_target_records",
]


def group_target_records(records: Sequence[TileRecord], group_by: str) -> dict[str, list[int]]:
    """Positions of ``records`` per target group, groups sorted by name.

    ``group_by`` is ``"domain"`` (the tile's domain), ``"sensor"`` (the tile's sensor, unless an
    attribute ``sensor`` says otherwise), ``"all"`` (one group named ``"target"``) or any attribute
    key; a tile without that attribute falls back to its domain (e.g. FBP regions known only for
    some scenes).
    """
    groups: dict[str, list[int]] = {}
    for position, record in enumerate(records):
        if group_by == "all":
            name = "target"
        elif group_by == "domain":
            name = record.domain
        elif group_by == "sensor":
            name = record.attributes.get("sensor") or record.sensor
        else:
            name = record.attributes.get(group_by) or record.domain
        groups.setdefault(str(name), []).append(position)
    return {name: groups[name] for name in sorted(groups)}


class EpochSeededSampler(Sampler[tuple[int, int]]):
    """Yields ``(index, epoch)`` keys in an order drawn from (seed, epoch): shuffled or sequential.

    Args:
        length: number of items.
        seed: base seed.
        shuffle: random permutation per epoch (else 0..length-1).
    """

    def __init__(self, length: int, seed: int = 42, shuffle: bool = True) -> None:
        self.length = int(length)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use ``epoch`` for the next iteration (Lightning calls this before every epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        self.epoch += 1
        if self.shuffle:
            generator = torch.Generator().manual_seed(sample_seed(self.seed, epoch, 0, stream=1))
            order = torch.randperm(self.length, generator=generator).tolist()
        else:
            order = list(range(self.length))
        return iter([(index, epoch) for index in order])


class SeededTransformDataset(Dataset):
    """Applies ``transform(sample, generator)`` with a generator seeded per (seed, epoch, index).

    Items are addressed by ``(index, epoch)`` (from ``EpochSeededSampler``) or a plain ``index``
    (epoch 0).

    Args:
        dataset: the dataset of raw samples.
        transform: ``(sample, generator) -> sample`` or ``None``.
        seed: base seed.
    """

    def __init__(self, dataset: Dataset, transform: Callable[..., Sample] | None, seed: int = 42) -> None:
        self.dataset = dataset
        self.transform = transform
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: int | tuple[int, int]) -> Sample:
        index, epoch = (int(key[0]), int(key[1])) if isinstance(key, (tuple, list)) else (int(key), 0)
        sample = self.dataset[index]
        sample.pop("nodata", None)  # training needs only the mask (nodata pixels are ignore there)
        if self.transform is None:
            return sample
        generator = torch.Generator().manual_seed(sample_seed(self.seed, epoch, index))
        return self.transform(sample, generator)


class TargetGroupDataset(Dataset):
    """The tiles of one target group (positions into a target dataset), tagged with ``group``,
    with a deterministic evaluation transform.

    Args:
        dataset: the target dataset.
        positions: the items of this group.
        group: the group's name (stored in each sample as ``group``).
        transform: evaluation transform or ``None``.
    """

    def __init__(
        self, dataset: Dataset, positions: Sequence[int], group: str, transform: Callable[..., Sample] | None = None
    ) -> None:
        self.dataset = dataset
        self.positions = list(positions)
        self.group = group
        self.transform = transform

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> Sample:
        sample = dict(self.dataset[self.positions[i]])
        sample["group"] = self.group
        return self.transform(sample) if self.transform is not None else sample


class SegCollate:
    """Batch sample dicts: ``image`` [B,C,H,W], ``mask`` [B,H,W], ``wavelengths`` [B,C] stacked;
    every other key (``domain``, ``group``, ``path``, ``sensor``, ``nodata``…) kept as a list
    (``None`` for a sample without it).

    Whole tiles of one batch normally share one size (the authors' rule, DATA §0.1). When they do
    not, every sample is padded at the bottom/right to the largest height and width of the batch —
    image with ``pad_value``, mask with ``ignore_index`` — so the padding never counts; the
    original sizes are kept in ``batch["size"]`` (list of (h, w)).

    Args:
        pad_value: image padding value, one number or one per band (raw units).
        ignore_index: mask padding value.
    """

    def __init__(self, pad_value: float | Sequence[float] = 0.0, ignore_index: int = IGNORE_INDEX) -> None:
        self.pad_value = pad_value if isinstance(pad_value, (int, float)) else tuple(float(v) for v in pad_value)
        self.ignore_index = int(ignore_index)

    def __call__(self, samples: Sequence[Sample]) -> dict[str, Any]:
        if not samples:
            raise ValueError("SegCollate: empty batch")
        channels = {s["image"].shape[0] for s in samples}
        if len(channels) > 1:
            detail = ", ".join(f"{s.get('path')}: {s['image'].shape[0]}" for s in samples)
            raise ValueError(f"SegCollate: images of one batch have different band counts ({detail})")
        sizes = [tuple(int(v) for v in s["image"].shape[-2:]) for s in samples]
        height, width = max(h for h, _ in sizes), max(w for _, w in sizes)
        if any(size != (height, width) for size in sizes):
            samples = [pad_sample(s, height, width, self.pad_value, self.ignore_index) for s in samples]
        batch: dict[str, Any] = {"image": torch.stack([s["image"] for s in samples])}
        has_mask = ["mask" in s for s in samples]
        if any(has_mask):
            if not all(has_mask):
                raise ValueError("SegCollate: some samples of the batch have a mask and some do not")
            batch["mask"] = torch.stack([s["mask"] for s in samples])
        if all("wavelengths" in s for s in samples):
            batch["wavelengths"] = torch.stack([torch.as_tensor(s["wavelengths"]) for s in samples])
        batch["size"] = sizes
        for key in dict.fromkeys(k for s in samples for k in s):  # keys of any sample (``nodata`` is optional)
            if key not in batch:
                batch[key] = [s.get(key) for s in samples]
        return batch


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn``: seed ``random``, numpy and torch of a loader worker from torch's worker
    seed, which the DataLoader derives from its seeded ``generator`` plus ``worker_id`` — so
    workers differ from each other and from epoch to epoch, and everything follows the base seed.
    (Recent torch versions seed ``random`` and numpy themselves; doing it here keeps the rule
    explicit and makes numpy's stream equal to ``RandomState(torch.initial_seed() % 2**32)``.)"""
    seed = torch.initial_seed()  # = base seed drawn from the loader's generator + worker_id
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


def _distributed_world() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class ShardedEvalSampler(torch.utils.data.DistributedSampler):
    """Rank r evaluates tiles r, r+W, r+2W, …: no tile repeated or dropped, so metrics summed
    across ranks equal one process's. A ``DistributedSampler`` subclass, so Lightning keeps it
    instead of injecting its padding sampler; ranks may run one batch fewer than others (safe
    for ``test``, where no collective runs per batch)."""

    def __init__(self, dataset: Dataset, num_replicas: int | None = None, rank: int | None = None) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        self.num_samples = len(range(self.rank, len(dataset), self.num_replicas))  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, len(self.dataset), self.num_replicas))  # type: ignore[arg-type]

    def __len__(self) -> int:
        return self.num_samples


class DGDataModule(L.LightningDataModule):
    """Source training data and per-target-domain evaluation data of a DG task.

    Attributes available after construction (the prepared index is read lazily):
    ``task``, ``num_classes``, ``classes``, ``palette``, ``wavelengths`` (of the first source
    sensor, float32 ``[C]``), ``pixel_mean``/``pixel_std`` (raw units, file band order),
    ``value_scale``, ``target_domains`` (sorted group names = order of the val/test loaders).

    Bands: every tile — source or target, in training, validation, test and predict — is fed in
    the MODEL's band order (``model_wavelengths``: the first source sensor's, or the trained
    model's, set by ``SegmentationTask`` with ``set_model_wavelengths``), its bands matched by
    wavelength (``bands.match_bands``, the rule ``predict-scene`` uses; the task's
    ``band_matching``). A B,G,R,NIR target of a NIR,R,G,B model is reordered; a sensor lacking one
    of the model's bands fails in ``setup`` with the domain, band and wavelength named, before any
    work. ``band_orders`` shows the chosen file bands (0-based) per sensor.

    Args:
        root: prepared benchmark folder (contains ``splits.json``).
        task: a built-in task name (``DG_TASKS``), a YAML task file, or a ``DGTask``.
        batch_size: training batch per device (default: the task's).
        eval_batch_size: validation/test/predict batch (default: the task's).
        num_workers: loader worker processes.
        seed: base seed of shuffling, augmentation and worker RNGs.
        train_transforms: replaces the task's pipeline; called as ``f(sample, generator)``.
        pin_memory: pin batches in page-locked memory (CUDA training).
        stats: ``"published"`` = the printed mean/std lists applied in our file (R,G,B) order
            (default: our images are never BGR, so the standard statistics fit them);
            ``"authors"`` = per-band values as the authors' cv2-BGR pipeline applied them (the
            printed lists reversed for LoveDA / Potsdam / OEM, DATA §8.1) — only meaningful for
            comparisons with their normalisation, since our band order stays R,G,B either way.
        eval_size_divisor: pad evaluation tiles to a multiple of this (``None``: whole tiles as
            stored, like the authors).
        drop_last: drop the last incomplete training batch.
        validate: check every tile before the first step (headers, label values, grids; cached).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        task: str | DGTask,
        batch_size: int | None = None,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        seed: int = 42,
        train_transforms: Callable[..., Sample] | None = None,
        pin_memory: bool = False,
        stats: Literal["authors", "published"] = "published",
        eval_size_divisor: int | None = None,
        drop_last: bool = True,
        validate: bool = True,
    ) -> None:
        super().__init__()
        self.root = Path(root)
        self.task: DGTask = load_task(task)
        self.batch_size = int(batch_size) if batch_size is not None else self.task.batch_size
        self.eval_batch_size = int(eval_batch_size) if eval_batch_size is not None else self.task.eval_batch_size
        if self.batch_size <= 0 or self.eval_batch_size <= 0:
            raise ValueError(f"batch sizes must be positive, got {self.batch_size} and {self.eval_batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.num_workers = int(num_workers)
        self.seed = int(seed)
        self.pin_memory = pin_memory
        self.stats = stats
        mean, std = self.task.stats(stats)
        self.pixel_mean: tuple[float, ...] = tuple(mean)
        self.pixel_std: tuple[float, ...] = tuple(std)
        self.eval_size_divisor = eval_size_divisor
        self.drop_last = drop_last
        self.train_transforms = (
            train_transforms if train_transforms is not None else build_train_transforms(self.task, self.pixel_mean)
        )
        self.eval_transforms = build_eval_transforms(eval_size_divisor, self.pixel_mean)
        self._index: PreparedIndex | None = None
        self.validate = validate
        self.validation: ValidationReport | None = None
        self._model_wavelengths: tuple[float, ...] | None = None
        #: sensor name → 0-based file bands fed to the model, in its order (shared with the datasets)
        self.band_orders: dict[str, list[int]] = {}
        self.train_dataset: SeededTransformDataset | None = None
        self.target_datasets: dict[str, TargetGroupDataset] = {}
        self.train_sampler: EpochSeededSampler | None = None

    # ----------------------------------------------------------------------------- task facts
    @property
    def num_classes(self) -> int:
        return self.task.num_classes

    @property
    def classes(self) -> list[str]:
        return list(self.task.classes)

    @property
    def palette(self) -> list[tuple[int, int, int]]:
        return [tuple(c) for c in self.task.palette]  # type: ignore[misc]

    @property
    def value_scale(self) -> float:
        return self.task.value_scale

    @property
    def index(self) -> PreparedIndex:
        """The prepared root's ``splits.json`` (read once)."""
        if self._index is None:
            self._index = PreparedIndex.load(self.root)
        return self._index

    def _source_sensor(self) -> Any:
        """The first source sensor's record; the prepared root's record wins over the built-in table."""
        name = self.task.source_sensors[0]
        sensor = self.index.sensors.get(name) if self.root.joinpath("splits.json").is_file() else None
        sensor = sensor or SENSORS.get(name)
        if sensor is None:
            raise KeyError(f"task {self.task.name!r}: source sensor {name!r} is neither in {self.root} nor built in")
        return sensor

    @property
    def wavelengths(self) -> torch.Tensor:
        """Centre wavelengths (µm, float32 ``[C]``) of the first source sensor — the band layout the
        model is built for."""
        return self._source_sensor().wavelength_tensor()

    @property
    def bandwidths(self) -> list[float]:
        """FWHM (µm) of the first source sensor's bands (``Sensor.bandwidths()``: its record's, else the default rule)."""
        return list(self._source_sensor().bandwidths())

    @property
    def gsd_m(self) -> float:
        """Ground sampling distance (m) of the first source sensor (``Sensor.gsd()``: its record's, else 10 m)."""
        return self._source_sensor().gsd()

    @property
    def model_wavelengths(self) -> list[float]:
        """Wavelengths (µm) of the model's input bands, in its order: those set by
        ``set_model_wavelengths`` (a trained model's), else the first source sensor's."""
        if self._model_wavelengths is not None:
            return list(self._model_wavelengths)
        return [float(w) for w in self.wavelengths.tolist()]

    def set_model_wavelengths(self, wavelengths: Any) -> None:
        """Feed every tile in the band order of a model with these wavelengths (µm), e.g. a model
        restored from a checkpoint; re-matches every sensor's bands (errors name the domain)."""
        waves = tuple(float(w) for w in (wavelengths.tolist() if isinstance(wavelengths, torch.Tensor) else wavelengths))
        own = tuple(float(w) for w in self.wavelengths.tolist())
        same = len(waves) == len(own) and all(
            (a != a and b != b) or abs(a - b) < 1e-6 for a, b in zip(waves, own)  # nan == nan here
        )
        self._model_wavelengths = None if same else waves
        if self._index is not None and self.band_orders:
            self._match_sensor_bands()

    def _match_sensor_bands(self) -> None:
        """``band_orders`` for every sensor whose tiles this task reads (updated in place: the
        datasets hold the same dict)."""
        index, task = self.index, self.task
        model = self.model_wavelengths
        records = [*self._source_records(), *self._target_records()]
        domains: dict[str, list[str]] = {}
        for record in records:
            domains.setdefault(record.sensor, [])
            if record.domain not in domains[record.sensor]:
                domains[record.sensor].append(record.domain)
        orders: dict[str, list[int]] = {}
        for name, names in domains.items():
            sensor = index.sensors[name]
            where = (f"{self.root / 'splits.json'}: domain(s) {names} (sensor {name!r}, bands "
                     f"{list(sensor.band_names)})")  # fmt: skip
            if task.band_matching == "position":
                if sensor.num_bands != len(model):
                    raise BandMismatchError(
                        f"{where}: {sensor.num_bands} bands but the model has {len(model)} and task {task.name!r} "
                        f"feeds bands by position (band_matching: position)"
                    )
                orders[name] = list(range(sensor.num_bands))
            else:
                orders[name] = match_bands(model, sensor.num_bands, sensor=sensor, where=where)
        self.band_orders.clear()
        self.band_orders.update(orders)
        first = index.sensors.get(task.source_sensors[0])
        scales = {name: index.sensors[name].value_scale for name in domains}
        odd = {name: scale for name, scale in scales.items() if first is not None and scale != first.value_scale}
        if odd and odd != getattr(self, "_warned_scales", None):
            import warnings

            self._warned_scales = odd
            details = ", ".join(f"{name!r} ({', '.join(domains[name])}): {scale:g}" for name, scale in odd.items())
            warnings.warn(
                f"{self.root / 'splits.json'}: sensors whose value scale (raw value of full brightness) differs from "
                f"the model's source sensor {first.name!r} ({first.value_scale:g}): {details}. Their raw values are "
                "fed unchanged, as the paper's protocol does: a different bit depth makes them look darker or "
                "brighter than anything seen in training.",
                stacklevel=3,
            )

    @property
    def target_domains(self) -> list[str]:
        """Names of the target groups, sorted: the order of the val/test loaders."""
        if self.target_datasets:
            return list(self.target_datasets)
        return list(group_target_records(self._target_records(), self.task.target_group_by))

    def _source_records(self) -> list[TileRecord]:
        domains = self.task.source_domains
        return self.index.select("source", None if domains is None else list(domains))

    def _target_records(self) -> list[TileRecord]:
        domains = self.task.target_domains
        return self.index.select("target", None if domains is None else list(domains))

    # ------------------------------------------------------------------------------- checks
    def _check_index(self) -> None:
        index, task, where = self.index, self.task, self.root / "splits.json"
        if index.benchmark != task.benchmark:
            raise ValueError(
                f"{where}: prepared benchmark is {index.benchmark!r} but task {task.name!r} needs {task.benchmark!r}"
            )
        if len(index.classes) != task.num_classes:
            raise ValueError(
                f"{where}: {len(index.classes)} classes {index.classes} but task {task.name!r} has "
                f"{task.num_classes} {list(task.classes)}"
            )
        source = self._source_records()
        if not source:
            raise ValueError(
                f"{where}: no source tiles for task {task.name!r} (source_domains={task.source_domains}; "
                f"source domains present: {index.domains('source')})"
            )
        foreign = sorted({t.sensor for t in source} - set(task.source_sensors))
        if foreign:
            raise ValueError(
                f"{where}: source tiles of sensor(s) {foreign} but task {task.name!r} declares source_sensors "
                f"{list(task.source_sensors)}"
            )
        targets = self._target_records()
        if not targets:
            raise ValueError(
                f"{where}: no target tiles for task {task.name!r} (target_domains={task.target_domains}; "
                f"target domains present: {index.domains('target')})"
            )
        # The model's bands are the first source sensor's: the task normalises that many. Every sensor
        # the task reads is matched to them (only those: a prepared root may hold other sensors for
        # other tasks, e.g. the synthetic world's 32-band OHS).
        first = task.source_sensors[0]
        bands = index.sensors[first].num_bands if first in index.sensors else len(self.model_wavelengths)
        if bands != len(self.pixel_mean):
            raise ValueError(
                f"{where}: source sensor {first!r} has {bands} bands but task {task.name!r} normalises "
                f"{len(self.pixel_mean)} bands (field 'mean')"
            )
        self._match_sensor_bands()

    def validate_tiles(self) -> ValidationReport:
        """The pre-flight pass over every tile this task reads (``spectralmoe.data.validate``): one error
        listing every bad file, before the first step. Cached per file by size and mtime."""
        if self.validation is not None:
            return self.validation
        index, task = self.index, self.task
        source = index.select("source", None if task.source_domains is None else list(task.source_domains))
        orders = {name: tuple(order) for name, order in self.band_orders.items()}
        checks = [TileCheck(self.root / t.image, self.root / t.label, index.sensors[t.sensor].num_bands, split, t.sensor,
                            orders.get(t.sensor))
                  for split, tiles in (("source", source), ("target", self._target_records())) for t in tiles]  # fmt: skip
        self.validation = validate_tiles(self.root, checks, num_classes=task.num_classes, mean=self.pixel_mean,
                                         std=self.pixel_std)  # fmt: skip
        return self.validation

    # -------------------------------------------------------------------------------- setup
    @property
    def source_tile_size(self) -> tuple[int, int] | None:
        """(height, width) of the first source tile (header only), or ``None`` before the index exists."""
        if not self.root.joinpath("splits.json").is_file():
            return None
        records = self._source_records()
        if not records:
            return None
        from spectralmoe.data.io import raster_shape

        _, height, width, _ = raster_shape(self.root / records[0].image)
        return height, width

    def _check_zoom(self) -> None:
        """Warn when the training pipeline's zoom does not suit the tiles (the authors' scale sets assume
        512-px tiles: 128-px tiles would be zoomed 2.4–4.8× before the crop)."""
        from spectralmoe.data.transforms import PIPELINE_A_SCALES, PIPELINE_B_SCALES

        task = self.task
        scales = task.resize_scales or {"A": PIPELINE_A_SCALES, "B": PIPELINE_B_SCALES}.get(task.train_pipeline)
        size = self.source_tile_size
        if not scales or size is None:
            return
        short = min(size)
        low, high = min(scales) / short, max(scales) / short
        if low > 1.5 or high < 0.4:
            import warnings

            warnings.warn(
                f"task {task.name!r}: training pipeline {task.train_pipeline} resizes the shortest edge of the "
                f"{short}-px source tiles to {min(scales)}–{max(scales)} px ({low:.1f}–{high:.1f}× zoom) before "
                f"cropping {task.crop_size} px — its scale set was made for 512-px tiles. Set `resize_scales` "
                "(and `crop_size`) in the task file; `spectralmoe prepare folder` writes them for its tiles.",
                stacklevel=3,
            )

    def setup(self, stage: str | None = None) -> None:
        """Build the source training dataset and one evaluation dataset per target group (after the
        pre-flight validation of every tile they hold)."""
        self._check_index()
        if self.validate:
            self.validate_tiles()
        if stage in (None, "fit"):
            self._check_zoom()
        task = self.task
        if self.train_dataset is None:
            source = PreparedDataset(
                self.root, split="source", domains=None if task.source_domains is None else list(task.source_domains),
                band_orders=self.band_orders,
            )
            self.train_dataset = SeededTransformDataset(source, self.train_transforms, self.seed)
        if not self.target_datasets:
            target = PreparedDataset(
                self.root, split="target", domains=None if task.target_domains is None else list(task.target_domains),
                band_orders=self.band_orders,
            )
            groups = group_target_records(target.records, task.target_group_by)
            self.target_datasets = {
                name: TargetGroupDataset(target, positions, name, self.eval_transforms)
                for name, positions in groups.items()
            }

    def _require_setup(self) -> None:
        if self.train_dataset is None or not self.target_datasets:
            self.setup()

    def _collate(self) -> SegCollate:
        return SegCollate(pad_value=self.pixel_mean, ignore_index=IGNORE_INDEX)

    def _loader(self, dataset: Dataset, batch_size: int, **kwargs: Any) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            num_workers=self.num_workers,
            collate_fn=self._collate(),
            pin_memory=self.pin_memory,
            worker_init_fn=seed_worker if self.num_workers > 0 else None,
            generator=torch.Generator().manual_seed(self.seed),
            **kwargs,
        )

    # ------------------------------------------------------------------------------ loaders
    def train_dataloader(self) -> DataLoader:
        """Shuffled source tiles with the task's augmentation; incomplete last batch dropped."""
        self._require_setup()
        assert self.train_dataset is not None
        if len(self.train_dataset) < self.batch_size and self.drop_last:
            raise ValueError(
                f"{self.root}: {len(self.train_dataset)} source tiles, fewer than one batch of {self.batch_size} "
                "(drop_last=True would give no batch)"
            )
        self.train_sampler = EpochSeededSampler(len(self.train_dataset), self.seed, shuffle=True)
        return self._loader(self.train_dataset, self.batch_size, sampler=self.train_sampler, drop_last=self.drop_last)

    def _eval_loaders(self, shard: bool = False) -> list[DataLoader]:
        self._require_setup()
        loaders = []
        for dataset in self.target_datasets.values():
            sampler = ShardedEvalSampler(dataset) if shard and _distributed_world() > 1 else None
            loaders.append(self._loader(dataset, self.eval_batch_size, shuffle=False, sampler=sampler))
        return loaders

    def val_dataloader(self) -> list[DataLoader]:
        """One loader of whole target tiles per target domain, in ``target_domains`` order."""
        return self._eval_loaders()

    def test_dataloader(self) -> list[DataLoader]:
        """Same as ``val_dataloader`` (the target set is both, as in the authors' configs).

        Under multi-process testing every tile is seen exactly once (``ShardedEvalSampler``), so
        the summed confusion matrices equal a single-process run. Validation during ``fit`` keeps
        Lightning's padding sampler (the DDP-wrapped forward needs equal batch counts per rank),
        so in-fit validation numbers may count up to world−1 repeated tiles per domain.
        """
        return self._eval_loaders(shard=True)

    def predict_dataloader(self) -> DataLoader:
        """All target tiles, group after group (each sample carries ``group``, ``domain``, ``path``)."""
        self._require_setup()
        return self._loader(ConcatDataset(list(self.target_datasets.values())), self.eval_batch_size, shuffle=False)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, task={self.task.name!r}, batch_size={self.batch_size}, "
            f"eval_batch_size={self.eval_batch_size}, num_workers={self.num_workers}, seed={self.seed})"
        )
