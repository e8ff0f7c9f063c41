"""DGDataModule over a tiny prepared root written here with the converters' PrepareRun."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from spectralmoe.bands import get_sensor
from spectralmoe.data.benchmarks import DGTask
from spectralmoe.data.datamodule import DGDataModule, EpochSeededSampler, SegCollate
from spectralmoe.data.prepare.common import PrepareRun, TileArrays
from spectralmoe.data.transforms import build_train_transforms

SIZE = 40
CROP = 32
SOURCE_TILES = 6
TARGETS = {"alpha": 3, "beta": 2}  # target domain -> number of tiles


def tile(seed: int, bands: int = 4) -> TileArrays:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (bands, SIZE, SIZE), dtype=np.uint8)
    image[0] = seed  # band 0 names the tile
    label = rng.integers(0, 3, (SIZE, SIZE), dtype=np.uint8)
    label[:2] = 255
    return TileArrays(image, label)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prepared") / "toy"
    run = PrepareRun("toy", out, progress=False)
    for i in range(SOURCE_TILES):
        run.add_tile(f"source/s{i}", lambda i=i: tile(i), split="source", domain="gf2", sensor="gf2",
                     attributes={"scene": f"scene{i % 2}"})  # fmt: skip
    n = 100
    for domain, count in TARGETS.items():
        for k in range(count):
            attributes = {"city": "X"} if domain == "alpha" and k < 2 else {}
            sensor = "planetscope" if domain == "alpha" else "gf2"
            run.add_tile(f"target/{domain}/t{k}", lambda n=n: tile(n), split="target", domain=domain, sensor=sensor,
                         attributes=attributes)  # fmt: skip
            n += 1
    run.finish(classes=["a", "b", "c"], palette=[(0, 0, 0), (255, 0, 0), (0, 255, 0)],
               sensors={"gf2": get_sensor("gf2"), "planetscope": get_sensor("planetscope")})  # fmt: skip
    return out


TASK = DGTask(
    name="toy", benchmark="toy", classes=("a", "b", "c"), palette=((0, 0, 0), (255, 0, 0), (0, 255, 0)),
    source_sensors=("gf2",), mean=(110.0, 85.0, 88.0, 82.0), std=(72.0, 65.0, 64.0, 63.0), value_scale=255.0,
    train_pipeline="A", crop_size=CROP, max_iters=10, val_interval=5, batch_size=2, eval_batch_size=2,
)  # fmt: skip


def module(root: Path, task: DGTask = TASK, **kwargs) -> DGDataModule:
    """A set-up module with 0 workers and seed 42 unless ``kwargs`` say otherwise."""
    dm = DGDataModule(root, task, **{"num_workers": 0, "seed": 42, **kwargs})
    dm.setup("fit")
    return dm


def epoch(loader) -> list[dict]:
    return list(loader)


def test_facts_exposed_before_setup(root):
    dm = DGDataModule(root, TASK, num_workers=0)
    assert dm.num_classes == 3 and dm.classes == ["a", "b", "c"] and dm.palette[1] == (255, 0, 0)
    assert dm.pixel_mean == TASK.mean and dm.pixel_std == TASK.std and dm.value_scale == 255.0
    assert torch.equal(dm.wavelengths, get_sensor("gf2").wavelength_tensor())
    assert dm.target_domains == ["alpha", "beta"]
    assert dm.batch_size == 2 and dm.eval_batch_size == 2


def test_train_loader_batches(root):
    dm = module(root)
    loader = dm.train_dataloader()
    batches = epoch(loader)
    assert len(batches) == len(loader) == SOURCE_TILES // 2
    for batch in batches:
        assert batch["image"].shape == (2, 4, CROP, CROP) and batch["image"].dtype == torch.float32
        assert batch["mask"].shape == (2, CROP, CROP) and batch["mask"].dtype == torch.int64
        assert batch["wavelengths"].shape == (2, 4)
        assert batch["domain"] == ["gf2", "gf2"] and len(batch["path"]) == 2
        assert set(batch["mask"].unique().tolist()) <= {0, 1, 2, 255}
        assert batch["image"].min() >= 0 and batch["image"].max() <= 255
    paths = [p for b in batches for p in b["path"]]
    assert sorted(paths) == sorted({p for p in paths}) and len(paths) == SOURCE_TILES  # each tile once
    assert paths != sorted(paths)  # shuffled (fixed seed: not the stored order)


def test_drop_last(root):
    dm = module(root, batch_size=4)
    assert len(epoch(dm.train_dataloader())) == 1  # 6 tiles, batch 4: the last 2 are dropped
    dm = module(root, batch_size=4, drop_last=False)
    assert [len(b["path"]) for b in epoch(dm.train_dataloader())] == [4, 2]


def test_val_and_test_loaders_one_per_target_domain(root):
    dm = module(root)
    assert dm.target_domains == ["alpha", "beta"]
    for loaders in (dm.val_dataloader(), dm.test_dataloader()):
        assert len(loaders) == 2
        for name, loader in zip(dm.target_domains, loaders):
            batches = epoch(loader)
            assert sum(len(b["path"]) for b in batches) == TARGETS[name]
            for b in batches:
                assert b["image"].shape[-2:] == (SIZE, SIZE)  # whole tiles, no crop
                assert b["group"] == [name] * len(b["path"]) and b["domain"] == [name] * len(b["path"])
    first = epoch(dm.val_dataloader()[0])[0]
    again = epoch(dm.val_dataloader()[0])[0]
    assert torch.equal(first["image"], again["image"]) and first["path"] == again["path"]  # no randomness
    assert sum(len(b["path"]) for b in epoch(dm.predict_dataloader())) == sum(TARGETS.values())


def test_eval_padding_to_a_divisor(root):
    dm = module(root, eval_size_divisor=16)
    batch = epoch(dm.val_dataloader()[1])[0]
    assert batch["image"].shape[-2:] == (48, 48) and (batch["mask"][:, SIZE:] == 255).all()
    # Padding uses the band means, i.e. 0 after normalisation.
    assert torch.equal(batch["image"][0, :, SIZE:, 0], torch.tensor(TASK.mean).view(4, 1).expand(4, 48 - SIZE))


@pytest.mark.parametrize(
    ("group_by", "groups"),
    [("city", {"X": 2, "alpha": 1, "beta": 2}), ("sensor", {"gf2": 2, "planetscope": 3}), ("all", {"target": 5})],
)
def test_target_grouping(root, group_by, groups):
    import dataclasses

    dm = module(root, task=dataclasses.replace(TASK, target_group_by=group_by))
    assert dm.target_domains == sorted(groups)
    counts = [sum(len(b["path"]) for b in epoch(loader)) for loader in dm.val_dataloader()]
    assert counts == [groups[name] for name in sorted(groups)]


def test_train_order_and_augmentation_are_deterministic(root):
    a = epoch(module(root).train_dataloader())
    b = epoch(module(root).train_dataloader())
    assert [x["path"] for x in a] == [x["path"] for x in b]
    assert all(torch.equal(x["image"], y["image"]) and torch.equal(x["mask"], y["mask"]) for x, y in zip(a, b))
    c = epoch(module(root, seed=7).train_dataloader())
    assert [x["path"] for x in a] != [x["path"] for x in c] or not torch.equal(a[0]["image"], c[0]["image"])
    # The next epoch of the same loader reshuffles and re-augments.
    loader = module(root).train_dataloader()
    first, second = epoch(loader), epoch(loader)
    assert [x["path"] for x in first] == [x["path"] for x in a]
    assert [x["path"] for x in first] != [x["path"] for x in second]
    # Lightning's set_epoch selects an epoch explicitly.
    loader.sampler.set_epoch(0)
    assert [x["path"] for x in epoch(loader)] == [x["path"] for x in a]


def test_sampler_alone():
    sampler = EpochSeededSampler(10, seed=3)
    e0, e1 = list(sampler), list(sampler)
    assert sorted(i for i, _ in e0) == list(range(10)) and {e for _, e in e0} == {0} and {e for _, e in e1} == {1}
    sampler.set_epoch(0)
    assert list(sampler) == e0
    assert [i for i, _ in EpochSeededSampler(5, shuffle=False)] == [0, 1, 2, 3, 4]


class RecordingTransform:
    """The task's pipeline, plus a record of the global RNGs of the process that ran it."""

    def __init__(self) -> None:
        self.pipeline = build_train_transforms(TASK)

    def __call__(self, sample: dict, generator: torch.Generator | None = None) -> dict:
        out = self.pipeline(sample, generator)
        info = torch.utils.data.get_worker_info()
        out["worker"] = -1 if info is None else info.id
        out["rng"] = (float(np.random.random()), random.random(), float(torch.rand(1)), torch.initial_seed())
        return out


def test_workers_are_seeded(root):
    def run(seed: int, workers: int) -> list[dict]:
        dm = module(root, seed=seed, num_workers=workers, train_transforms=RecordingTransform())
        return epoch(dm.train_dataloader())

    one = run(42, 1)
    assert all(w == 0 for b in one for w in b["worker"])
    again = run(42, 1)
    other = run(43, 1)
    rngs = lambda batches: [r for b in batches for r in b["rng"]]  # noqa: E731
    assert rngs(one) == rngs(again)  # numpy, random and torch seeded from the base seed
    assert rngs(one) != rngs(other)
    assert len({r[0] for r in rngs(one)}) == SOURCE_TILES  # the stream advances within the worker
    # The worker's numpy and random were seeded from its torch seed (loader generator + worker id).
    first = one[0]["rng"][0]
    worker_seed = first[3]
    assert worker_seed == again[0]["rng"][0][3] != other[0]["rng"][0][3]
    assert first[0] == np.random.RandomState(worker_seed % 2**32).random_sample()
    assert first[1] == random.Random(worker_seed).random()
    # The augmentation itself depends on (seed, epoch, index) only, not on the worker.
    inline = run(42, 0)
    assert [b["path"] for b in inline] == [b["path"] for b in one]
    assert all(torch.equal(x["image"], y["image"]) for x, y in zip(inline, one))


def test_collate_pads_unequal_tiles():
    collate = SegCollate(pad_value=[1.0, 2.0], ignore_index=255)
    small = {"image": torch.zeros(2, 3, 4), "mask": torch.zeros(3, 4, dtype=torch.long), "path": "s",
             "wavelengths": torch.tensor([0.6, 0.8])}  # fmt: skip
    large = {"image": torch.zeros(2, 5, 6), "mask": torch.ones(5, 6, dtype=torch.long), "path": "l",
             "wavelengths": torch.tensor([0.6, 0.8])}  # fmt: skip
    batch = collate([small, large])
    assert batch["image"].shape == (2, 2, 5, 6) and batch["mask"].shape == (2, 5, 6)
    assert (batch["mask"][0, 3:] == 255).all() and (batch["mask"][0, :, 4:] == 255).all()
    assert (batch["mask"][0, :3, :4] == 0).all() and (batch["mask"][1] == 1).all()
    assert (batch["image"][0, 1, 3:] == 2.0).all()
    assert batch["size"] == [(3, 4), (5, 6)] and batch["path"] == ["s", "l"]
    with pytest.raises(ValueError, match="band counts"):
        collate([small, {**large, "image": torch.zeros(3, 5, 6)}])


def test_mismatched_roots_fail_early(root):
    import dataclasses

    with pytest.raises(ValueError, match="benchmark"):
        module(root, task=dataclasses.replace(TASK, benchmark="flair"))
    with pytest.raises(ValueError, match="classes"):
        module(root, task=dataclasses.replace(TASK, classes=("a", "b"), palette=((0, 0, 0), (1, 1, 1))))
    with pytest.raises(ValueError, match="source_sensors"):
        module(root, task=dataclasses.replace(TASK, source_sensors=("gf1",)))
    with pytest.raises(ValueError, match="no target tiles"):
        module(root, task=dataclasses.replace(TASK, target_domains=("gamma",)))
    dm = module(root, task=dataclasses.replace(TASK, source_domains=("gf2",), target_domains=("beta",)))
    assert dm.target_domains == ["beta"]


def test_published_stats_option(root):
    import dataclasses

    task = dataclasses.replace(TASK, published_mean=(1.0, 2.0, 3.0, 4.0), published_std=(5.0, 6.0, 7.0, 8.0))
    assert DGDataModule(root, task).pixel_mean == (1.0, 2.0, 3.0, 4.0)  # published is the default
    assert DGDataModule(root, task, stats="authors").pixel_mean == TASK.mean


def test_sharded_eval_sampler_sees_every_tile_once():
    from spectralmoe.data.datamodule import ShardedEvalSampler

    dataset = list(range(7))
    shards = [list(ShardedEvalSampler(dataset, num_replicas=3, rank=r)) for r in range(3)]
    assert sorted(i for shard in shards for i in shard) == dataset  # no tile repeated or dropped
    assert [len(ShardedEvalSampler(dataset, num_replicas=3, rank=r)) for r in range(3)] == [3, 2, 2]
    assert list(ShardedEvalSampler([0], num_replicas=2, rank=1)) == []  # a rank may get nothing
