"""Shared pytest fixtures. Each helper keeps its fixtures in clearly named functions."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


# ------------------------------------------------------------------------ Slicer (slicer-core) fixtures

@pytest.fixture
def slicer_scene():
    """A fresh headless MRML scene built like Slicer's application (slicer-core); sets slicer.mrmlScene.

    Yields the vtkMRMLScene; slicer.modules.<name>.logic() works for subjecthierarchy, terminologies,
    segmentations, volumes, markups, tables and colors.
    """
    pytest.importorskip("slicer", reason="slicer-core is not installed (pip install slicer-core)")
    from LiverLocalizationLib import mrml

    scene, _app = mrml.create_headless_scene()
    yield scene
    scene.Clear(True)


@pytest.fixture(scope="session")
def ircadb_crop_dir() -> Path:
    """The real 2 mm liver crop of 3D-IRCADb 1.1 (CT, liver mask, Couinaud labels, landmarks); skips when absent."""
    folder = SHARED_DATA / "ircadb1_1" / "liver_crop_2mm"
    if not (folder / "ct.nii.gz").exists():
        pytest.skip(f"real CT data not available at {folder} (../shared/data relative to the repository root)")
    return folder
