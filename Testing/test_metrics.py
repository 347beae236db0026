"""Metrics against values computed by hand."""

import numpy as np
import pytest
import SimpleITK as sitk

from LiverLocalizationLib import metrics


def test_dice_and_iou_hand_computed():
    a = np.zeros((4, 4, 4), bool)
    b = np.zeros((4, 4, 4), bool)
    a[0, 0, :4] = True          # 4 voxels
    b[0, 0, 2:4] = True         # 2 voxels, both in a
    b[1, 1, 1] = True           # 1 voxel outside a
    assert metrics.dice(a, b) == pytest.approx(2 * 2 / (4 + 3))
    assert metrics.iou(a, b) == pytest.approx(2 / 5)
    assert metrics.dice(np.zeros(3), np.zeros(3)) == 1.0


def test_volume_in_ml_uses_spacing():
    img = sitk.Image(10, 10, 10, sitk.sitkUInt8)
    img.SetSpacing((2.0, 2.0, 2.5))
    img[2:7, 2:7, 2:6] = 1  # 5*5*4 = 100 voxels of 10 mm³
    assert metrics.volume_ml(img) == pytest.approx(1.0)
    diff = metrics.volume_difference(img, img)
    assert diff["ml"] == 0 and diff["percent"] == 0


def test_hausdorff95_of_shifted_cube_in_mm():
    a = np.zeros((30, 30, 30), bool)
    a[10:20, 10:20, 10:20] = True
    b = np.roll(a, 3, axis=2)       # shifted 3 voxels along x
    # spacing (z, y, x) = (1, 1, 2) mm: every surface point of a cube face moves 6 mm along x;
    # most surface points lie on faces whose nearest point on the other cube is the same face shifted.
    hd = metrics.hausdorff95(a, b, spacing=(1.0, 1.0, 2.0))
    assert hd == pytest.approx(6.0)
    assert metrics.hausdorff95(a, a, spacing=(1, 1, 1)) == 0.0
    assert metrics.hausdorff95(a, np.zeros_like(a), spacing=(1, 1, 1)) == float("inf")


def test_per_class_table_rows():
    t = np.zeros((5, 5, 5), np.uint8)
    r = np.zeros((5, 5, 5), np.uint8)
    t[:2] = 1
    r[:2] = 1
    t[3:] = 2
    r[4:] = 2
    rows = metrics.per_class_table(t, r, {1: "one", 2: "two"}, spacing=(1, 1, 1))
    assert rows[0]["dice"] == 1.0
    assert rows[1]["dice"] == pytest.approx(2 * 25 / (50 + 25))
    assert rows[1]["truth_volume_ml"] == pytest.approx(0.025)


def test_binary_report_hand_computed():
    y_true = [1, 1, 1, 0, 0, 0, 0, 1]
    y_pred = [1, 1, 0, 0, 0, 1, 0, 1]
    r = metrics.binary_report(y_true, y_pred)
    # tp 3, fn 1, tn 3, fp 1
    assert (r["tp"], r["fn"], r["tn"], r["fp"]) == (3, 1, 3, 1)
    assert r["accuracy"] == pytest.approx(6 / 8)
    assert r["sensitivity"] == pytest.approx(3 / 4)
    assert r["specificity"] == pytest.approx(3 / 4)
    assert r["precision"] == pytest.approx(3 / 4)
    assert r["f1"] == pytest.approx(0.75)


def test_confusion_matrix_and_multiclass_report():
    cm = metrics.confusion_matrix([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 2, 0], 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    rep = metrics.classification_report([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 2, 0], ["a", "b", "c"])
    assert rep["accuracy"] == pytest.approx(4 / 6)
    assert rep["per_class"]["c"]["sensitivity"] == pytest.approx(2 / 3)
    assert rep["per_class"]["b"]["precision"] == pytest.approx(1 / 2)


def test_roc_auc_hand_computed_with_ties():
    # positives scores 0.8, 0.4; negatives 0.4, 0.1 → pairs: (0.8>0.4)1 (0.8>0.1)1 (0.4=0.4)½ (0.4>0.1)1 → 3.5/4
    assert metrics.roc_auc([1, 1, 0, 0], [0.8, 0.4, 0.4, 0.1]) == pytest.approx(0.875)
    assert metrics.roc_auc([1, 0], [0.9, 0.1]) == 1.0
    assert np.isnan(metrics.roc_auc([1, 1], [0.2, 0.3]))
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    s = np.round(rng.random(200) + 0.3 * y, 2)
    assert metrics.roc_auc(y, s) == pytest.approx(sklearn_metrics.roc_auc_score(y, s))


def test_expected_calibration_error():
    # all predictions 0.8 in one bin, 80 % correct → perfectly calibrated
    y = np.array([1] * 8 + [0] * 2)
    assert metrics.expected_calibration_error(y, np.full(10, 0.8)) == pytest.approx(0.0)
    # predictions 0.9 but only half positive → ECE 0.4
    assert metrics.expected_calibration_error([1, 0], [0.9, 0.9]) == pytest.approx(0.4)


def test_bootstrap_ci_resamples_groups_and_brackets_estimate():
    y = np.array([1, 1, 0, 0, 1, 0, 1, 0])
    p = np.array([1, 1, 0, 1, 1, 0, 0, 0])
    groups = [0, 0, 1, 1, 2, 2, 3, 3]

    def accuracy(idx):
        return float(np.mean(y[idx] == p[idx]))

    est, lo, hi = metrics.bootstrap_ci(accuracy, groups, n_resamples=500, seed=0)
    assert est == pytest.approx(0.75)
    assert lo <= est <= hi
    # group accuracies are 1, .5, 1, .5 → any resample mean lies in [0.5, 1]
    assert lo >= 0.5 and hi <= 1.0


def test_match_instances_pairs_misses_and_false_positives():
    truth = np.zeros((10, 10, 10), np.uint16)
    test = np.zeros_like(truth)
    truth[1:4, 1:4, 1:4] = 1          # found (shifted by one voxel)
    test[2:5, 1:4, 1:4] = 7
    truth[6:9, 6:9, 6:9] = 2          # missed
    test[0:2, 7:9, 7:9] = 3           # false positive
    m = metrics.match_instances(test, truth, min_iou=0.1)
    assert [(a, b) for a, b, _ in m["pairs"]] == [(7, 1)]
    assert m["pairs"][0][2] == pytest.approx(18 / 36)
    assert m["missed"] == [2]
    assert m["false_positives"] == [3]
