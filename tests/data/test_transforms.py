"""N-band transforms: geometric alignment, band safety of the photometric distortion, determinism,
mmseg crop semantics, padding, and the paper's pipelines."""

from __future__ import annotations

import colorsys

import pytest
import torch

from spectralmoe.bands import get_sensor, rgb_band_indices
from spectralmoe.data.benchmarks import DG_TASKS
from spectralmoe.data.transforms import (
    PIPELINE_A_SCALES,
    PIPELINE_B_SCALES,
    Compose,
    PadTo,
    PhotoMetricDistortion,
    RandomChoiceResize,
    RandomCrop,
    RandomFlip,
    build_eval_transforms,
    build_train_transforms,
    hsv_to_rgb,
    resized_shape,
    rgb_to_hsv,
    sample_seed,
)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def coordinate_sample(height: int = 64, width: int = 64) -> dict:
    """Band 0 = row, band 1 = column; mask = 1000·row + column: every pixel says where it came from."""
    rows = torch.arange(height, dtype=torch.float32).view(-1, 1).expand(height, width)
    cols = torch.arange(width, dtype=torch.float32).view(1, -1).expand(height, width)
    image = torch.stack([rows, cols])
    mask = (rows * 1000 + cols).long()
    return {"image": image, "mask": mask, "wavelengths": torch.tensor([float("nan")] * 2), "path": "coords"}


def random_sample(sensor: str, size: int = 24, seed: int = 0) -> dict:
    s = get_sensor(sensor)
    g = gen(seed)
    image = torch.rand(s.num_bands, size, size, generator=g) * s.value_scale
    mask = torch.randint(0, 4, (size, size), generator=g)
    return {"image": image, "mask": mask, "wavelengths": s.wavelength_tensor(), "sensor": s.name, "path": sensor}


# ------------------------------------------------------------------------------------ geometry
def test_crop_and_flip_keep_image_and_mask_aligned():
    pipeline = Compose([RandomCrop(40, cat_max_ratio=1.0), RandomFlip(0.5)])
    sample = coordinate_sample()
    flipped = 0
    for seed in range(20):
        out = pipeline(sample, gen(seed))
        assert out["image"].shape == (2, 40, 40) and out["mask"].shape == (40, 40)
        assert torch.equal(out["mask"], (out["image"][0] * 1000 + out["image"][1]).long())
        flipped += int(out["image"][1, 0, 0] > out["image"][1, 0, -1])
    assert 0 < flipped < 20  # both branches of the flip were exercised
    assert torch.equal(sample["mask"], coordinate_sample()["mask"])  # the input was not modified


@pytest.mark.parametrize("scales", [(32,), (100,)])  # shrink (antialiased) and enlarge
def test_resize_moves_mask_with_image(scales):
    sample = coordinate_sample(48, 64)
    out = RandomChoiceResize(scales, max_long_edge=1024)(sample, gen(0))
    h, w = resized_shape(48, 64, scales[0], 1024)
    assert out["image"].shape == (2, h, w) and out["mask"].shape == (h, w)
    assert out["mask"].dtype == torch.int64
    # Bilinear coordinates of the image and nearest-neighbour coordinates of the mask agree within
    # about a source pixel (antialiasing widens the kernel to 1.5 px at the borders when shrinking).
    rows, cols = out["mask"] // 1000, out["mask"] % 1000
    assert (rows.float() - out["image"][0]).abs().max() <= 1.5
    assert (cols.float() - out["image"][1]).abs().max() <= 1.5
    assert (rows.float() - out["image"][0]).abs().mean() <= 0.6
    # Nearest neighbour never invents label values.
    assert set(out["mask"].unique().tolist()) <= set(sample["mask"].unique().tolist())


def test_resized_shape_follows_shortest_edge_rule():
    assert resized_shape(1024, 1024, 307, 1024) == (307, 307)
    assert resized_shape(512, 1024, 614, 1024) == (512, 1024)  # long edge capped at 1024
    assert resized_shape(500, 2000, 512, 1024) == (256, 1024)
    assert resized_shape(600, 400, 409, None) == (614, 409)  # 613.5 rounds half up


# ------------------------------------------------------------------------- photometric distortion
@pytest.mark.parametrize("sensor", ["gf2", "flair", "ohs", "flair-elevation"])
def test_photometric_changes_only_the_rgb_bands(sensor):
    sample = random_sample(sensor)
    s = get_sensor(sensor)
    rgb = list(rgb_band_indices(sample["wavelengths"]))  # the float32 wavelengths the transform sees
    others = [i for i in range(s.num_bands) if i not in rgb]
    transform = PhotoMetricDistortion(value_scale=s.value_scale)
    changed = 0
    for seed in range(12):
        out = transform(sample, gen(seed))
        assert out["image"].shape == sample["image"].shape
        assert torch.equal(out["image"][others], sample["image"][others])  # bit-for-bit
        assert out["image"][rgb].min() >= 0 and out["image"][rgb].max() <= s.value_scale
        changed += int(not torch.equal(out["image"][rgb], sample["image"][rgb]))
        assert torch.equal(out["mask"], sample["mask"])
    assert changed >= 6


def test_photometric_is_band_order_invariant():
    """NIR,R,G,B and R,G,B,NIR copies of one image get the same distortion, band by band."""
    nirrgb = random_sample("gf2")
    order = [1, 2, 3, 0]  # NIR,R,G,B -> R,G,B,NIR
    rgbnir = dict(nirrgb, image=nirrgb["image"][order], wavelengths=nirrgb["wavelengths"][order])
    transform = PhotoMetricDistortion(quantize=True)
    for seed in range(8):
        a = transform(nirrgb, gen(seed))["image"]
        b = transform(rgbnir, gen(seed))["image"]
        assert torch.allclose(a[order], b, atol=1e-4)
        assert torch.equal(a[0], nirrgb["image"][0]) and torch.equal(b[3], nirrgb["image"][0])


def test_photometric_without_rgb_bands():
    """Vaihingen NIR,R,G has no blue: 'spectral' = brightness/contrast on all bands, same affine op."""
    sample = random_sample("vaihingen")
    sample["image"] = 60 + sample["image"] * (40 / 255)  # 60..100: no step can clip
    changed = False
    for seed in range(10):
        out = PhotoMetricDistortion(no_rgb="spectral")(sample, gen(seed))["image"]
        changed |= not torch.equal(out, sample["image"])
        # The same affine map out = a·x + b on every band.
        x, y = sample["image"].flatten(), out.flatten()
        design = torch.stack([x, torch.ones_like(x)], 1).double()
        coef = torch.linalg.lstsq(design, y.double().unsqueeze(1)).solution
        assert (design @ coef - y.double().unsqueeze(1)).abs().max() < 1e-3
    assert changed
    assert torch.equal(PhotoMetricDistortion(no_rgb="skip")(sample, gen(0))["image"], sample["image"])
    with pytest.raises(ValueError, match="no blue band"):
        PhotoMetricDistortion(no_rgb="error")(sample, gen(0))


def test_photometric_quantize_gives_integers():
    out = PhotoMetricDistortion(quantize=True)(random_sample("rgb"), gen(3))["image"]
    assert torch.equal(out, out.round())


def test_hsv_matches_colorsys_and_round_trips():
    rgb = torch.rand(3, 200, generator=gen(1), dtype=torch.float64)
    rgb[:, :5] = 0.5  # grey pixels
    rgb[:, 5] = 0.0  # black
    hsv = rgb_to_hsv(rgb)
    for k in range(rgb.shape[1]):
        expected = colorsys.rgb_to_hsv(*rgb[:, k].tolist())
        assert hsv[:, k].tolist() == pytest.approx(list(expected), abs=1e-9)
    assert torch.allclose(hsv_to_rgb(hsv), rgb, atol=1e-9)
    assert torch.allclose(hsv_to_rgb(rgb_to_hsv(rgb * 255)), rgb * 255, atol=1e-6)  # any scale


# ------------------------------------------------------------------------------------- determinism
def test_pipeline_is_deterministic_under_a_seed_and_varies_across_seeds():
    pipeline = build_train_transforms("flair")
    sample = random_sample("flair", size=40)
    a = pipeline(sample, gen(7))
    b = pipeline(sample, gen(7))
    c = pipeline(sample, gen(8))
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    assert not torch.equal(a["image"], c["image"])


def test_sample_seed_mixes_its_inputs():
    seeds = {sample_seed(42, e, i) for e in range(3) for i in range(50)}
    assert len(seeds) == 150
    assert sample_seed(42, 0, 1) == sample_seed(42, 0, 1) != sample_seed(43, 0, 1)
    with pytest.raises(ValueError):
        sample_seed(-1, 0, 0)


# ------------------------------------------------------------------------------- crop semantics
def class_stripe_sample() -> dict:
    """64 columns: 0..47 class 0, 48..63 class 1. A 32-wide crop passes cat_max_ratio 0.75 iff its
    left offset is >= 25 (it then holds > 8 columns of class 1)."""
    sample = coordinate_sample(32, 64)
    sample["mask"] = (sample["image"][1] >= 48).long()
    return sample


def test_random_crop_retries_dominated_crops():
    sample = class_stripe_sample()
    balanced = RandomCrop(32, cat_max_ratio=0.75)
    plain = RandomCrop(32, cat_max_ratio=1.0)
    left = lambda out: int(out["image"][1, 0, 0])  # noqa: E731
    hits_balanced = sum(left(balanced(sample, gen(s))) >= 25 for s in range(100))
    hits_plain = sum(left(plain(sample, gen(s))) >= 25 for s in range(100))
    assert hits_plain < 45  # about 8/33 of uniform offsets
    assert hits_balanced > 80  # about 1 - (25/33)^10
    for s in range(30):
        first = plain(sample, gen(s))  # the first candidate of the same random stream
        if balanced.accepts(first["mask"]):
            assert torch.equal(balanced(sample, gen(s))["image"], first["image"])
    # With no retries the first candidate is always used.
    assert all(
        torch.equal(RandomCrop(32, max_tries=0)(sample, gen(s))["image"], plain(sample, gen(s))["image"])
        for s in range(10)
    )


def test_crop_balance_check_ignores_ignored_pixels():
    crop = RandomCrop(8)
    mask = torch.full((8, 8), 255)
    mask[0, :3] = 0
    mask[1, :3] = 1  # 6 valid pixels, 50/50
    assert crop.accepts(mask)
    mask[1, :3] = 0
    assert not crop.accepts(mask)  # one class only
    assert not crop.accepts(torch.full((8, 8), 255))
    mask[1, :1] = 1  # 5 vs 1: 0.83 > 0.75
    assert not crop.accepts(mask)


def test_crop_pads_small_images_with_ignore():
    sample = coordinate_sample(20, 30)
    sample["image"] = sample["image"] + 1.0  # no zeros inside the image
    out = RandomCrop(32, cat_max_ratio=0.75)(sample, gen(0))
    assert out["image"].shape == (2, 32, 32) and out["mask"].shape == (32, 32)
    assert torch.equal(out["image"][:, :20, :30], sample["image"])
    assert torch.equal(out["mask"][:20, :30], sample["mask"])
    assert (out["image"][:, 20:] == 0).all() and (out["image"][:, :, 30:] == 0).all()
    assert (out["mask"][20:] == 255).all() and (out["mask"][:, 30:] == 255).all()
    # Per-band padding values (the authors pad with the band means = 0 after normalisation).
    out = RandomCrop(32, pad_value=[5.0, 7.0])(sample, gen(0))
    assert (out["image"][0, 20:] == 5.0).all() and (out["image"][1, 20:] == 7.0).all()


def test_pad_to():
    sample = coordinate_sample(20, 30)
    out = PadTo(size_divisor=16)(sample)
    assert out["image"].shape == (2, 32, 32) and (out["mask"][20:] == 255).all()
    assert torch.equal(out["mask"][:20, :30], sample["mask"])
    assert PadTo(size=(24, 40))(sample)["mask"].shape == (24, 40)
    assert PadTo(size_divisor=10)(sample)["image"].shape == (2, 20, 30)  # already a multiple
    with pytest.raises(ValueError, match="larger than the pad size"):
        PadTo(size=16)(sample)
    with pytest.raises(ValueError, match="exactly one"):
        PadTo()


# --------------------------------------------------------------------------- the paper's pipelines
def test_build_train_transforms_matches_the_paper():
    assert PIPELINE_A_SCALES == (307, 358, 409, 460, 512, 563, 614)
    assert PIPELINE_B_SCALES == tuple(int(51.2 * x) for x in range(5, 21))
    assert PIPELINE_B_SCALES[0] == 256 and PIPELINE_B_SCALES[-1] == 1024 and len(PIPELINE_B_SCALES) == 16
    cases = [("fbp-cross-sensor", PIPELINE_A_SCALES), ("flair", PIPELINE_A_SCALES),
             ("loveda-rural2urban", PIPELINE_B_SCALES), ("openearthmap-europe", PIPELINE_B_SCALES)]  # fmt: skip
    for name, scales in cases:
        steps = build_train_transforms(name).transforms
        assert [type(t) for t in steps] == [RandomChoiceResize, RandomCrop, RandomFlip, PhotoMetricDistortion, PadTo]
        assert steps[0].scales == scales and steps[0].max_long_edge == 1024
        assert steps[1].size == (512, 512) and steps[1].cat_max_ratio == 0.75
        assert steps[4].size == (512, 512) and steps[4].pad_value == DG_TASKS[name].mean
    ohs = build_train_transforms("whu-ohs").transforms
    assert [type(t) for t in ohs] == [RandomFlip]
    assert build_eval_transforms(None) is None


def test_train_pipeline_pads_after_the_photometric_step():
    """A 307-px resize of a square tile leaves a 512 crop mostly padding: those pixels must be the
    band means (0 after normalisation) and ignored, whatever the photometric step did."""
    task = DG_TASKS["potsdam2vaihingen"]
    pipeline = build_train_transforms(task)
    pipeline.transforms[0] = RandomChoiceResize([307])
    for seed in range(6):
        out = pipeline(random_sample("potsdam-rgb", size=48), gen(seed))
        assert out["image"].shape == (3, 512, 512) and out["mask"].shape == (512, 512)
        assert out["image"].dtype == torch.float32 and out["mask"].dtype == torch.int64
        assert (out["mask"][307:] == 255).all() and (out["mask"][:, 307:] == 255).all()
        assert torch.equal(out["image"][:, 307:, 0], torch.tensor(task.mean).view(3, 1).expand(3, 512 - 307))
    small = RandomCrop(32, pad=False)(random_sample("rgb", size=20), gen(0))
    assert small["image"].shape == (3, 20, 20)
