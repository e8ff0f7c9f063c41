"""Metrics with mmseg IoUMetric semantics: hand-made cases against a plain numpy reference."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

from spectralmoe.engine.metrics import SegConfusion, report_to_csv, scores_from_confusion, summarize, write_report

C = 4
NAMES = ["a", "b", "c", "d"]


def reference(preds: list[np.ndarray], labels: list[np.ndarray], num_classes: int) -> dict[str, np.ndarray | float]:
    """mmseg ``intersect_and_union`` summed over a set, written out pixel-class by pixel-class."""
    inter = np.zeros(num_classes)
    area_pred = np.zeros(num_classes)
    area_label = np.zeros(num_classes)
    for p, l in zip(preds, labels):
        keep = l != 255
        p, l = p[keep], l[keep]
        for c in range(num_classes):
            inter[c] += np.sum((p == c) & (l == c))
            area_pred[c] += np.sum(p == c)  # predictions at labels >= C count here
            area_label[c] += np.sum(l == c)  # labels >= C are never class c
    union = area_pred + area_label - inter
    iou = np.array([inter[c] / union[c] if union[c] else np.nan for c in range(num_classes)]) * 100
    acc = np.array([inter[c] / area_label[c] if area_label[c] else np.nan for c in range(num_classes)]) * 100
    return {
        "IoU": iou,
        "Acc": acc,
        "mIoU": float(np.nanmean(iou)),
        "mAcc": float(np.nanmean(acc)),
        "aAcc": float(inter.sum() / area_label.sum() * 100),
    }


def hand_made() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Domain ``one`` has every class in its labels plus one label 7 (≥ C) and ignored pixels;
    domain ``two`` has no class 2 or 3 in its labels, predicts 3 somewhere but never 2."""
    label_one = np.array([[0, 0, 1, 1], [2, 2, 3, 3], [7, 255, 0, 1]])
    pred_one = np.array([[0, 1, 1, 1], [2, 0, 3, 2], [3, 0, 0, 1]])
    label_two = np.array([[0, 0, 0, 1], [1, 1, 255, 255], [0, 1, 1, 0]])
    pred_two = np.array([[0, 3, 0, 1], [1, 0, 2, 2], [0, 1, 1, 1]])  # the 2s sit on ignored pixels
    return {"one": (pred_one, label_one), "two": (pred_two, label_two)}


def confusion(pred: np.ndarray, label: np.ndarray) -> torch.Tensor:
    metric = SegConfusion(C)
    half = pred.shape[0] // 2  # two updates: accumulation over batches
    metric.update(torch.as_tensor(pred[:half]), torch.as_tensor(label[:half]))
    metric.update(torch.as_tensor(pred[half:]), torch.as_tensor(label[half:]))
    return metric.compute()


def test_confusion_layout_out_of_range_labels_and_ignore():
    pred, label = hand_made()["one"]
    matrix = confusion(pred, label).numpy()
    assert matrix.shape == (C + 1, C)
    assert matrix.sum() == np.sum(label != 255)  # ignore dropped, everything else counted once
    assert matrix[C].tolist() == [0, 0, 0, 1]  # label 7 predicted as 3: a row of its own
    assert matrix[0, 0] == 2 and matrix[0, 1] == 1 and matrix[2, 2] == 1 and matrix[2, 0] == 1


@pytest.mark.parametrize("domain", ["one", "two"])
def test_scores_equal_numpy_reference(domain):
    pred, label = hand_made()[domain]
    got = scores_from_confusion(confusion(pred, label))
    ref = reference([pred], [label], C)
    np.testing.assert_allclose(got["IoU"], ref["IoU"], equal_nan=True)
    np.testing.assert_allclose(got["Acc"], ref["Acc"], equal_nan=True)
    for key in ("mIoU", "mAcc", "aAcc"):
        assert got[key] == pytest.approx(ref[key])


def test_label_out_of_range_counts_as_false_positive_only():
    pred, label = hand_made()["one"]
    scores = scores_from_confusion(confusion(pred, label))
    # class 3: intersection 1 (the [1,2] pixel); predicted at [1,2], [2,0] (label 7); labels at [1,2], [1,3]
    assert scores["IoU"][3] == pytest.approx(100 * 1 / (2 + 2 - 1))
    assert scores["Acc"][3] == pytest.approx(100 * 1 / 2)
    assert scores["out_of_range_label_pixels"] == 1
    assert scores["labelled_pixels"] == 10  # 12 pixels − 1 ignored − 1 out of range


def test_absent_classes_excluded_per_domain_but_present_elsewhere():
    data = hand_made()
    report = summarize({name: confusion(*data[name]) for name in data}, NAMES, stage="test")
    two, one = report["domains"]["two"], report["domains"]["one"]
    # class 2: absent from domain two's labels and never predicted there -> undefined, excluded
    assert math.isnan(two["IoU"]["c"]) and math.isnan(two["Acc"]["c"])
    # class 3: absent from two's labels but predicted once -> IoU 0 (counted), Acc undefined
    assert two["IoU"]["d"] == 0.0 and math.isnan(two["Acc"]["d"])
    ious = [two["IoU"][n] for n in ("a", "b", "d")]
    assert two["mIoU"] == pytest.approx(np.mean(ious))  # 3 classes, not 4
    assert two["mAcc"] == pytest.approx(np.mean([two["Acc"]["a"], two["Acc"]["b"]]))
    # the same classes are defined in domain one
    assert not math.isnan(one["IoU"]["c"]) and not math.isnan(one["Acc"]["c"]) and one["Acc"]["d"] == 50.0
    # mean over domains: of the domains' scores; per class over the domains where defined
    assert report["mean"]["mIoU"] == pytest.approx((one["mIoU"] + two["mIoU"]) / 2)
    assert report["mean"]["aAcc"] == pytest.approx((one["aAcc"] + two["aAcc"]) / 2)
    assert report["mean"]["IoU"]["c"] == pytest.approx(one["IoU"]["c"])
    assert report["mean"]["Acc"]["d"] == pytest.approx(one["Acc"]["d"])
    # pooled: all pixels as one set
    ref = reference([data["one"][0], data["two"][0]], [data["one"][1], data["two"][1]], C)
    assert report["pooled"]["mIoU"] == pytest.approx(ref["mIoU"])
    assert report["pooled"]["aAcc"] == pytest.approx(ref["aAcc"])
    np.testing.assert_allclose(list(report["pooled"]["IoU"].values()), ref["IoU"], equal_nan=True)


def test_report_files_json_and_csv(tmp_path):
    data = hand_made()
    report = summarize({name: confusion(*data[name]) for name in data}, NAMES, stage="val", epoch=3, step=7)
    json_path, csv_path = write_report(report, tmp_path / "out", "metrics_x")
    stored = json.loads(json_path.read_text())
    assert stored["stage"] == "val" and stored["epoch"] == 3 and stored["units"] == "percent"
    assert stored["domains"]["two"]["IoU"]["c"] is None  # NaN -> null
    assert stored["confusion"]["one"][C] == [0, 0, 0, 1]
    rows = list(csv.DictReader(csv_path.open()))
    assert [r["row"] for r in rows] == ["one", "two", "mean", "pooled"]
    assert rows[1]["IoU/c"] == "nan" and float(rows[1]["mIoU"]) == pytest.approx(report["domains"]["two"]["mIoU"])
    assert csv_path.read_text() == report_to_csv(report)
    assert not [p for p in tmp_path.joinpath("out").iterdir() if p.name.startswith(".")]  # no temp files left


def test_invalid_inputs_are_refused():
    metric = SegConfusion(3)
    with pytest.raises(ValueError, match="shape"):
        metric.update(torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="class indices"):
        metric.update(torch.full((2, 2), 3), torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="no confusion"):
        summarize({}, ["a"])
