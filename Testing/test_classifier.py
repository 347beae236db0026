"""Lesion classifier: network shapes and determinism, patch geometry, safe weight loading, Grad-CAM,
a tiny training run on phantoms, and the shipped weights against their model card."""

from __future__ import annotations

import json
import pickle
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

torch = pytest.importorskip("torch")

from LiverLocalizationLib import classifier, geometry  # noqa: E402
from LiverLocalizationLib.errors import InputError  # noqa: E402


# ----------------------------------------------------------------------------- synthetic volumes

def synthetic_ct(direction=np.eye(3), spacing=(1.5, 1.5, 2.0), size=(60, 60, 40), lesions=(((0, 0, 0), 8.0, 10.0),),
                 seed=0):
    """A 105 HU block (σ 5 HU) with spherical lesions ((centre LPS mm, radius mm, HU), …); origin chosen so that
    the image's physical centre is at LPS (0, 0, 0). Returns (ct int16, instance labels uint16)."""
    ct = sitk.Image([int(s) for s in size], sitk.sitkInt16)
    ct.SetSpacing(spacing)
    ct.SetDirection(tuple(np.asarray(direction, float).ravel()))
    centre_index = (np.asarray(size) - 1) / 2.0
    ct.SetOrigin(tuple(-geometry.index_to_lps(ct, centre_index) + np.asarray(ct.GetOrigin())))
    grid = geometry.physical_grid_lps(ct)
    rng = np.random.default_rng(seed)
    arr = 105 + rng.normal(0, 5, grid.shape[:3])
    lab = np.zeros(grid.shape[:3], np.uint16)
    for k, (centre, radius, hu) in enumerate(lesions, start=1):
        inside = np.linalg.norm(grid - np.asarray(centre, float), axis=-1) <= radius
        arr[inside] = hu
        lab[inside] = k
    return geometry.copy_geometry(arr.astype(np.int16), ct), geometry.copy_geometry(lab, ct)


def _save_pair(net, tmp_path, name="m", card_extra=None):
    card = {"kinds": list(classifier.KINDS), "architecture": dict(classifier.ARCHITECTURE_DEFAULTS),
            "patch": dict(classifier.PATCH_DEFAULTS), "temperature": 1.5, **(card_extra or {})}
    return classifier.save_model(net, card, tmp_path / f"{name}.safetensors")


# ----------------------------------------------------------------------------- network

def test_model_shapes_size_and_determinism():
    torch.manual_seed(3)
    a = classifier.build_model().eval()
    torch.manual_seed(3)
    b = classifier.build_model().eval()
    x = torch.randn(3, 2, 32, 32, 32)
    with torch.no_grad():
        ya, yb = a(x), b(x)
        assert ya.shape == (3, len(classifier.KINDS))
        assert torch.equal(ya, yb)
        assert a.features(x).shape == (3, 64, 8, 8, 8)
    n_bytes = sum(p.numel() * 4 for p in a.state_dict().values())
    assert n_bytes < 20e6


def test_save_load_round_trip_gives_the_same_calibrated_probabilities(tmp_path):
    torch.manual_seed(0)
    net = classifier.build_model().eval()
    path = _save_pair(net, tmp_path)
    model = classifier.load_model(path)
    assert model.temperature == 1.5 and model.kinds == classifier.KINDS
    x = np.random.default_rng(0).normal(size=(2, 2, 32, 32, 32)).astype(np.float32)
    with torch.no_grad():
        expected = torch.softmax(net(torch.as_tensor(x)) / 1.5, 1).numpy()
    assert np.allclose(model.predict_proba(x), expected, atol=1e-5)
    mal = model.malignant_probability(model.predict_proba(x))
    assert np.allclose(mal, expected[:, 2] + expected[:, 3], atol=1e-5)


def test_a_failed_save_leaves_the_earlier_weights_and_card_whole(tmp_path, monkeypatch):
    """`liverloc train` saves through `save_model`: a save that fails half-way (here the card cannot be written, as on
    a full disk) leaves the earlier pair byte for byte, loadable, and no hidden partial file."""
    torch.manual_seed(0)
    path = _save_pair(classifier.build_model().eval(), tmp_path)
    before = {f.name: f.read_bytes() for f in tmp_path.iterdir()}
    torch.manual_seed(1)

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(classifier.json, "dumps", full_disk)
    with pytest.raises(OSError, match="No space"):
        _save_pair(classifier.build_model().eval(), tmp_path)
    monkeypatch.undo()
    assert {f.name: f.read_bytes() for f in tmp_path.iterdir()} == before
    assert classifier.load_model(path).temperature == 1.5


# ----------------------------------------------------------------------------- safe loading

def test_pickle_file_is_refused_without_unpickling(tmp_path):
    net = classifier.build_model()
    path = tmp_path / "weights.safetensors"
    torch.save(net.state_dict(), path)             # a zip-pickle disguised by its name
    shutil.copy(_save_pair(net, tmp_path).with_suffix(".json"), path.with_suffix(".json"))
    with pytest.raises(InputError, match="pickle"):
        classifier.load_model(path)
    raw = tmp_path / "raw.safetensors"
    raw.write_bytes(pickle.dumps({"a": 1}))         # a plain pickle
    shutil.copy(path.with_suffix(".json"), raw.with_suffix(".json"))
    with pytest.raises(InputError, match="pickle"):
        classifier.load_model(raw)


def test_pt_suffix_missing_file_and_missing_card_are_refused(tmp_path):
    net = classifier.build_model()
    path = _save_pair(net, tmp_path)
    with pytest.raises(InputError, match="not found"):
        classifier.load_model(tmp_path / "nope.safetensors")
    pt = tmp_path / "m.pt"
    pt.write_bytes(path.read_bytes())
    with pytest.raises(InputError, match="safetensors"):
        classifier.load_model(pt)
    path.with_suffix(".json").unlink()
    with pytest.raises(InputError, match="Model card"):
        classifier.load_model(path)


def test_corrupt_file_is_refused(tmp_path):
    path = _save_pair(classifier.build_model(), tmp_path)
    data = bytearray(path.read_bytes())
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(bytes(data[: len(data) // 2]))
    card = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
    card.pop("weights_sha256")
    truncated.with_suffix(".json").write_text(json.dumps(card), encoding="utf-8")
    with pytest.raises(InputError, match="corrupt|not a safetensors"):
        classifier.load_model(truncated)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(np.random.default_rng(0).bytes(4000))
    garbage.with_suffix(".json").write_text(json.dumps(card), encoding="utf-8")
    with pytest.raises(InputError, match="not a safetensors"):
        classifier.load_model(garbage)
    # bytes changed after the card was written: the checksum catches it
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match="SHA-256"):
        classifier.load_model(path)


def test_wrong_shapes_and_missing_keys_are_refused(tmp_path):
    from safetensors.torch import save_file

    small = classifier.build_model(widths=(8, 16, 32))
    path = _save_pair(small, tmp_path, "small")      # card says the default widths, tensors are smaller
    card = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
    card["architecture"] = dict(classifier.ARCHITECTURE_DEFAULTS)
    card.pop("weights_sha256")
    path.with_suffix(".json").write_text(json.dumps(card), encoding="utf-8")
    with pytest.raises(InputError, match="wrong shapes"):
        classifier.load_model(path)
    state = {k: v for k, v in classifier.build_model().state_dict().items() if not k.startswith("head.fc")}
    partial = tmp_path / "partial.safetensors"
    save_file(state, str(partial))
    partial.with_suffix(".json").write_text(json.dumps(card), encoding="utf-8")
    with pytest.raises(InputError, match="missing tensors"):
        classifier.load_model(partial)


# ----------------------------------------------------------------------------- patches and Grad-CAM

def test_patch_is_centred_and_independent_of_direction_and_spacing():
    lesion = ((10.0, -6.0, 4.0), 7.0, 15.0)
    ct_a, lab_a = synthetic_ct(lesions=(lesion,))
    flipped = np.diag([-1.0, 1.0, -1.0])[:, [1, 0, 2]]       # axes permuted and flipped
    ct_b, lab_b = synthetic_ct(direction=flipped, spacing=(1.2, 1.0, 1.6), size=(70, 80, 50), lesions=(lesion,))
    pa, ref = classifier.extract_patch(ct_a, lab_a, 1, return_reference=True)
    pb = classifier.extract_patch(ct_b, sitk.GetArrayFromImage(lab_b), 1)
    n = classifier.PATCH_DEFAULTS["size"]
    assert pa.shape == pb.shape == (2, n, n, n)
    # patch centre = lesion centre in LPS, side = fov_factor × lesion extent
    centre = geometry.index_to_lps(ref, np.full(3, (n - 1) / 2))
    assert np.allclose(centre, lesion[0], atol=1.6)
    assert ref.GetSpacing()[0] * n == pytest.approx(2.0 * 2 * lesion[1], abs=2 * 2.0 * 2.0)
    c = n // 2
    assert pa[1, c, c, c] > 0.99 and pb[1, c, c, c] > 0.99
    assert pa[0, c, c, c] == pytest.approx((15 - 100) / 100, abs=0.05)
    assert pa[1, 0, 0, 0] == 0 and pa[0, 0, 0, 0] == pytest.approx(0.05, abs=0.2)
    # same physical content sampled from two differently oriented grids
    assert np.mean(np.abs(pa[1] - pb[1])) < 0.05
    assert np.mean(np.abs(pa[0] - pb[0])) < 0.1
    with pytest.raises(InputError, match="not in the lesion label map"):
        classifier.extract_patch(ct_a, lab_a, 7)


def test_classify_lesions_rows_and_gradcam_volume_on_the_ct_grid(tmp_path):
    lesions = (((12.0, 10.0, 0.0), 8.0, 10.0), ((-15.0, -12.0, 6.0), 6.0, 60.0))
    rot = sitk.Euler3DTransform((0, 0, 0), 0.2, -0.1, 0.3).GetMatrix()
    ct, lab = synthetic_ct(direction=np.asarray(rot).reshape(3, 3), lesions=lesions)
    torch.manual_seed(0)
    model = classifier.load_model(_save_pair(classifier.build_model(), tmp_path))
    calls = []
    rows, cam = classifier.classify_lesions(ct, lab, model, progress=lambda f, m: calls.append(f))
    assert [r["id"] for r in rows] == [1, 2]
    for r in rows:
        assert r["kind"] in classifier.KINDS
        assert sum(r["kind_probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
        assert r["malignant_probability"] == pytest.approx(
            r["kind_probabilities"]["metastasis"] + r["kind_probabilities"]["hcc"], abs=1e-6)
    assert geometry.same_geometry(cam, ct) and cam.GetPixelID() == sitk.sitkFloat32
    arr = sitk.GetArrayViewFromImage(cam)
    assert arr.min() >= 0 and arr.max() <= 1.0 + 1e-6
    # the map is confined to the patches: nothing far (> 2 patch half-widths) from every lesion
    grid = geometry.physical_grid_lps(ct)
    far = np.min([np.linalg.norm(grid - np.asarray(c), axis=-1) / r for c, r, _ in lesions], axis=0) > 2 * 2.0 * np.sqrt(3)
    assert far.any() and not arr[far].any()
    assert calls and calls[-1] == 1.0
    with pytest.raises(InputError, match="geometry"):
        classifier.classify_lesions(ct, sitk.Shrink(lab, (2, 2, 2)), model)


def test_gradcam_shape_range_and_target():
    torch.manual_seed(1)
    net = classifier.build_model()
    x = np.random.default_rng(1).normal(size=(2, 32, 32, 32)).astype(np.float32)
    cams = [classifier.gradcam(net, x, target=k) for k in range(4)]
    for c in cams:
        assert c.shape == (32, 32, 32) and c.dtype == np.float32
        assert c.min() >= 0 and c.max() <= 1
    assert cams[0].max() == 1.0 or not cams[0].any()
    assert not np.allclose(cams[0], cams[1])
    assert net.training  # restored


# ----------------------------------------------------------------------------- on phantoms

def test_detected_lesion_patches_are_matched_to_the_truth():
    from LiverLocalizationLib import classifier_training as T
    from LiverLocalizationLib import phantom

    data = T.case_patches(5, "small", use_detected=True, include_missed=False, n_lesions=6, keep_truth_patches=True)
    ph = phantom.generate_phantom(5, size="small", n_lesions=6)
    kinds = {row["id"]: row["kind"] for row in ph.lesions}
    stats = data.stats[5]
    detected = data.sources == "detected"
    assert stats["truth"] == len(ph.lesions) and stats["matched"] == detected.sum() >= 1
    assert (data.sources == "truth-all").sum() == len(ph.lesions)
    assert set(data.sources) <= {"detected", "truth-all"}
    for src, truth_id, label, x in zip(data.sources, data.lesion_ids, data.labels, data.patches):
        assert classifier.KINDS[label] == kinds[truth_id]
        c = x.shape[-1] // 2
        assert x[1, c - 2:c + 3, c - 2:c + 3, c - 2:c + 3].mean() > 0.5, f"{src} patch of lesion {truth_id} not centred"


@pytest.mark.slow
def test_tiny_training_run_on_phantoms_learns(tmp_path):
    from LiverLocalizationLib import classifier_training as T

    progress = []
    card = T.train(tmp_path, n_cases=10, epochs=10, seed=1, use_detected=False, lesions_per_case=10,
                   patch={"size": 20}, n_bootstrap=50, batch_size=8,
                   progress=lambda f, m: progress.append(f))
    split = card["data"]["case_seeds"]
    assert not (set(split["train"]) & set(split["test"])) and not (set(split["train"]) & set(split["validation"]))
    losses = card["training"]["history"]["train_loss"]
    assert np.mean(losses[-3:]) < 0.85 * losses[0], losses
    test = card["metrics"]["test"]
    counts = card["data"]["kind_counts"]["test"]
    majority = max(counts.values()) / sum(counts.values())
    assert test["n_lesions"] >= 10
    assert test["kind_accuracy"] > max(0.25, majority), (test, counts)
    for name in ("lesion_classifier.safetensors", "lesion_classifier.json", "training_curves.png", "confusion_matrix.png"):
        assert (tmp_path / name).stat().st_size > 0
    model = classifier.load_model(tmp_path / "lesion_classifier.safetensors")
    assert model.patch["size"] == 20 and model.temperature == card["temperature"]
    assert progress[-1] == 1.0 and all(b >= a for a, b in zip(progress, progress[1:]))


def _shipped_card() -> dict:
    if not classifier.DEFAULT_WEIGHTS.is_file():
        pytest.fail(f"the shipped weights {classifier.DEFAULT_WEIGHTS} are missing")
    return json.loads(classifier.model_card_path(classifier.DEFAULT_WEIGHTS).read_text(encoding="utf-8"))


def test_shipped_model_gradcam_lies_in_and_around_the_lesion():
    from LiverLocalizationLib import phantom

    card = _shipped_card()
    model = classifier.load_model()
    seed = card["data"]["case_seeds"]["test"][0]          # a case the model never trained on
    ph = phantom.generate_phantom(seed, size="small", n_lesions=6)
    fractions, uniform = [], []
    for row in ph.lesions:
        x = classifier.extract_patch(ph.ct, ph.truth_lesions, row["id"], model.patch)
        cam = classifier.gradcam(model, x)
        fractions.append(classifier.gradcam_mass_near_lesion(cam, x[1]))
        uniform.append(classifier.gradcam_mass_near_lesion(np.ones_like(cam), x[1]))
    assert len(fractions) >= 3
    assert np.nanmean(fractions) > 0.5, fractions
    assert np.nanmean(fractions) > 2 * np.mean(uniform)


@pytest.mark.slow
def test_shipped_weights_reproduce_the_model_card_metrics(tmp_path):
    from LiverLocalizationLib import classifier_training as T

    card = _shipped_card()
    seeds = card["data"]["case_seeds"]["test"]
    # the card's detected-lesion figures were measured with the detector the weights were trained with
    detector = card["data"].get("detector") or "training"
    report = T.evaluate(None, seeds, tmp_path, n_lesions=card["data"]["lesions_per_training_case"], n_bootstrap=50,
                        detector=detector)
    assert report["detector"] == detector
    retrain = ("the lesion detector or the phantom changed since the shipped model was trained; retrain with "
               f"`{card['training']['command'].replace('DIR', 'LiverLocalization/Resources/Models')}`")
    for key, tol in (("kind_accuracy", 0.08), ("malignant_auc", 0.05), ("malignant_accuracy", 0.08)):
        assert report["headline_true_masks"][key] == pytest.approx(card["metrics"]["test_true_masks"][key], abs=tol), \
            f"{key} on true masks: {retrain}"
        assert report["headline"][key] == pytest.approx(card["metrics"]["test"][key], abs=tol + 0.05), \
            f"{key} on detected lesions: {retrain}"
    assert (tmp_path / "evaluation.json").is_file() and (tmp_path / "confusion_matrix.png").is_file()
    with pytest.raises(InputError, match="used to train"):
        T.evaluate(None, card["data"]["case_seeds"]["train"][:1], tmp_path)
    with pytest.raises(InputError, match="Unknown lesion detector 'median'"):
        T.evaluate(None, seeds[:1], tmp_path, detector="median")
