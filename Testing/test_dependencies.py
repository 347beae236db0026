"""Optional packages: a missing one gives an error naming it and what to do, before any work is done."""

from __future__ import annotations

import importlib.util

import pytest

from LiverLocalizationLib import dependencies, pipeline
from LiverLocalizationLib.errors import InputError
from LiverLocalizationLib.phantom import generate_phantom


def _without(monkeypatch, *absent: str) -> None:
    """Make the top-level modules `absent` look uninstalled: not found, and not importable."""
    real_find_spec = importlib.util.find_spec
    real_import = importlib.import_module

    def find_spec(name, *args, **kwargs):
        return None if name.split(".")[0] in absent else real_find_spec(name, *args, **kwargs)

    def import_module(name, *args, **kwargs):
        if name.split(".")[0] in absent:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    monkeypatch.setattr(importlib, "import_module", import_module)


def test_a_run_lists_what_it_needs():
    names = lambda packages: [p.module for p in packages]  # noqa: E731
    assert names(dependencies.packages_for_run(liver_mask_given=False, classify=True)) == ["skimage", "safetensors",
                                                                                          "torch"]
    assert names(dependencies.packages_for_run(liver_mask_given=True, classify=False)) == []
    assert names(dependencies.packages_for_run(liver_mask_given=True, classify=False, figures=True)) == ["matplotlib"]


@pytest.mark.parametrize("absent", ["skimage", "safetensors", "torch"])
def test_each_missing_package_stops_the_run_before_any_work_naming_it(monkeypatch, absent):
    ph = generate_phantom(seed=13, size="small", n_lesions=1)
    _without(monkeypatch, absent)
    package = {p.module: p for p in (dependencies.SCIKIT_IMAGE, dependencies.SAFETENSORS, dependencies.TORCH)}[absent]
    assert dependencies.missing([package]) == [package]
    calls = []
    monkeypatch.setattr(pipeline, "check_memory", lambda ct: calls.append(ct))  # the first step of the work
    with pytest.raises(dependencies.MissingPackage) as info:
        pipeline.run_pipeline(ph.ct, ph.landmarks, options=pipeline.PipelineOptions(classify=True))
    assert isinstance(info.value, InputError) and not calls
    message = str(info.value)
    assert f"'{absent}'" in message and package.requirement in message and package.purpose in message.lower()


def test_a_liver_mask_given_needs_no_scikit_image(monkeypatch):
    import SimpleITK as sitk

    ph = generate_phantom(seed=13, size="small", n_lesions=1)
    liver = sitk.Cast(sitk.NotEqual(ph.truth_couinaud, 0), sitk.sitkUInt8)
    _without(monkeypatch, "skimage")
    result = pipeline.run_pipeline(ph.ct, ph.landmarks, liver, options=pipeline.PipelineOptions(classify=False))
    assert result.liver_mask is not None


def test_the_liver_extraction_itself_names_scikit_image_when_it_is_missing(monkeypatch):
    import numpy as np

    from LiverLocalizationLib import liver

    _without(monkeypatch, "skimage")
    candidate = np.zeros((20, 40, 40), bool)
    candidate[4:16, 5:18, 5:35] = True
    candidate[4:16, 22:35, 5:35] = True
    candidate[4:16, 18:22, 15:25] = True  # a neck between two blobs
    seeds = np.zeros_like(candidate)
    seeds[10, 10, 20] = True
    with pytest.raises(dependencies.MissingPackage, match="scikit-image"):
        liver.separate_at_necks(candidate, seeds, (1.0, 1.0, 1.0), 3.0)
