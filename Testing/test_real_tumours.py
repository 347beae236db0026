"""Real tumours: lits117 (LiTS case 117, 22 tumours of 10 mm or more) with its liver mask, end to end and from clicks.

The figures are those of `benchmarks/eval_real_tumours.py` (the same functions); the bounds are the issue's
targets where the code meets them and the measured level (so that a regression fails) where it does not yet.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from LiverLocalizationLib import io, metrics, pipeline

CASE = Path(__file__).resolve().parents[2] / "shared" / "data" / "lits117"
pytestmark = pytest.mark.skipif(not (CASE / "ct.nii.gz").exists(),
                                reason=f"{CASE} is absent (the shared real data; present in CI)")


@pytest.fixture(scope="module")
def case():
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import eval_real_tumours as evaluation

    ct = io.read_image(CASE / "ct.nii.gz")
    liver = io.read_image(CASE / "mask_liver.nii.gz")
    tumours = io.read_image(CASE / "mask_tumor_instances.nii.gz")
    landmarks = io.read_markups(CASE / "landmarks.mrk.json")
    big = evaluation.big_tumours(sitk.GetArrayFromImage(tumours), float(np.prod(ct.GetSpacing())))
    return evaluation, ct, liver, tumours, landmarks, big


def test_with_its_liver_mask_every_tumour_is_found_with_few_false_ones(case):
    """Targets: tumour Dice >= 0.80 pooled, recall >= 0.95 for tumours >= 10 mm, at most 1 false positive."""
    evaluation, ct, liver, tumours, landmarks, big = case
    assert len(big) == 22
    r = evaluation.run_with_mask(ct, liver, tumours, landmarks, big, float(np.prod(ct.GetSpacing())))
    assert r["dice"] >= 0.83  # target 0.80; 0.859 measured
    assert r["found"] >= 21, f"missed tumours {r['missed']}"
    assert r["false_positives"] <= 1


def test_one_click_inside_each_tumour_segments_it(case):
    """Detection off, one click at each tumour's deepest voxel: every tumour gets its lesion, the largest (155 ml,
    lobulated) too, at the target median per-tumour Dice of 0.80 (measured 0.833, lowest 0.679)."""
    evaluation, ct, liver, tumours, landmarks, big = case
    r = evaluation.run_clicks(ct, liver, tumours, landmarks, big, float(np.prod(ct.GetSpacing())))
    assert r["segmented"] == len(big) and r["from_clicks"] == len(big)
    assert r["median_dice"] >= 0.80  # the target; 0.833 measured
    assert r["min_dice"] >= 0.5


def test_end_to_end_the_extracted_liver_keeps_most_tumour_voxels(case):
    """From the CT and its landmarks (the field of view is the liver's box, so the large tumours at its faces are
    the hardest). Target: 95 % of tumour voxels in the liver; measured 94.9 %, tumour Dice 0.813, liver Dice
    0.957, one false positive (history in docs/validation_history.md)."""
    evaluation, ct, liver, tumours, landmarks, big = case
    r = evaluation.run_end_to_end(ct, liver, tumours, landmarks, big, float(np.prod(ct.GetSpacing())))
    assert r["tumour_in_liver"] >= 0.94
    assert r["liver_dice"] >= 0.94
    assert r["dice"] >= 0.77
    assert r["false_positives"] <= 1


def test_with_slices_of_5_mm_the_extracted_liver_keeps_its_dome_and_tumours(case):
    """lits117 re-made with 4.8 mm slices (the mean of 3), as many clinical CTs are reconstructed: the raw CT's
    working grid is then not block-averaged across slices, but its noise is low (12 HU), so it is not
    median-filtered, whose 3 slices (14 mm) cut the dome and the tumours from the liver (liver Dice 0.855 and
    42 % of the tumour voxels inside with the median; 0.908 and 55 % without, before the lesion stage)."""
    from LiverLocalizationLib import liver as liver_extraction

    evaluation, ct, liver, tumours, landmarks, big = case
    ct3, liver3, tumours3 = evaluation.make_variant("thick", ct, liver, tumours)
    mask = sitk.GetArrayFromImage(liver_extraction.extract_liver(io.validate_ct(ct3), landmarks, raw=True)) > 0
    reference = sitk.GetArrayFromImage(liver3) > 0
    assert metrics.dice(mask, reference) >= 0.89
    assert mask[sitk.GetArrayFromImage(tumours3) > 0].mean() >= 0.5


def test_the_lesion_report_names_its_source_evidence_and_sizes(case):
    evaluation, ct, liver, tumours, landmarks, big = case
    result = pipeline.run_pipeline(ct, landmarks, liver_mask=liver, options=pipeline.PipelineOptions(classify=False))
    assert len(result.lesions) >= 20
    for row in result.lesions:
        assert row["source"] == "detected" and row["contrast_hu"] > 0 and row["evidence_z"] > 3
        assert row["axial_diameter_mm"] <= row["max_diameter_mm"] + 1e-6
        assert row["equivalent_diameter_mm"] <= row["max_diameter_mm"] + 1e-6
        assert row["main_segment"] in {"I", "II", "III", "IV", "V", "VI", "VII", "VIII"}
    largest = max(result.lesions, key=lambda row: row["volume_ml"])
    found = sitk.GetArrayFromImage(result.lesion_labels) == largest["id"]
    truth = sitk.GetArrayFromImage(tumours)
    ids, counts = np.unique(truth[found & (truth > 0)], return_counts=True)
    assert len(ids), "the largest lesion should lie on a tumour"
    tumour = truth == ids[np.argmax(counts)]
    assert metrics.dice(found, tumour) > 0.7
    assert largest["volume_ml"] == pytest.approx(tumour.sum() * float(np.prod(ct.GetSpacing())) / 1000.0, rel=0.3)


def test_the_shipped_classifier_calls_most_real_tumours_malignant(case):
    """LiTS tumours are all malignant: on their reference masks the shipped network calls at least 80 % of the 22
    malignant (target 90 %, measured 86 %: `benchmarks/eval_real_classifier.py`)."""
    pytest.importorskip("torch", reason="torch is not installed (pip install -e '.[ml]')")
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import eval_real_classifier as real_classifier

    from LiverLocalizationLib import classifier

    _, ct, _, tumours, _, big = case
    ct = io.validate_ct(ct)
    arr = sitk.GetArrayFromImage(tumours)
    rows = real_classifier.classify(ct, np.where(np.isin(arr, big), arr, 0), classifier.load_model())
    assert sorted(row["id"] for row in rows) == sorted(big)
    assert np.mean([row["malignant_probability"] >= 0.5 for row in rows]) >= 0.8


def test_the_shipped_classifiers_grad_cam_lies_on_the_real_tumours(case):
    """Issue target: at least half of the Grad-CAM map within the tumour plus 5 mm (median over the 22 tumours;
    measured 0.63, a uniform map 0.12: `benchmarks/eval_real_classifier.py`)."""
    pytest.importorskip("torch", reason="torch is not installed (pip install -e '.[ml]')")
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import eval_real_classifier as real_classifier

    from LiverLocalizationLib import classifier

    _, ct, _, tumours, _, big = case
    shares, uniform = real_classifier.gradcam_shares(io.validate_ct(ct), sitk.GetArrayFromImage(tumours), big,
                                                     classifier.load_model())
    assert len(shares) == 22
    assert np.nanmedian(shares) >= 0.5
    assert np.nanmedian(shares) > 3 * np.median(uniform)
