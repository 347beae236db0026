"""The pipeline in a worker process (the Slicer module's Apply): the same result as in this process, progress while
it runs, Cancel within 2 s at any point, and the worker's errors brought back as clear messages."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
import SimpleITK as sitk

from LiverLocalizationLib import background, pipeline
from LiverLocalizationLib.errors import InputError

OPTIONS = pipeline.PipelineOptions(denoise_method="median", classify=False)


@pytest.fixture(scope="module")
def phantom_case():
    from LiverLocalizationLib.phantom import generate_phantom

    return generate_phantom(7, size="small", n_lesions=3)


def _wait(run: background.BackgroundRun, timeout_s: float = 300.0) -> list[tuple[float, str]]:
    reports, start = [], time.perf_counter()
    while run.running():
        reports += run.poll()
        assert time.perf_counter() - start < timeout_s, "the worker did not finish"
        time.sleep(0.2)
    return reports + run.poll()


def test_a_background_run_gives_the_result_of_a_run_in_this_process(phantom_case, tmp_path):
    ph = phantom_case
    points = {"click": np.asarray(ph.landmarks["RPV"], float) + [0.0, -20.0, 0.0]}
    options = dataclasses.replace(OPTIONS, lesion_points=points)
    job = background.write_job(tmp_path / "job", ph.ct, ph.landmarks, None, options)
    run = background.BackgroundRun.start(job)
    reports = _wait(run)
    assert run.process.returncode == 0, run._log_tail()
    result = run.result(ph.ct)
    here = pipeline.run_pipeline(ph.ct, ph.landmarks, options=options)
    fractions = [f for f, _ in reports]
    assert len(reports) >= 5 and fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    assert all(message for _, message in reports)
    for name in background.RESULT_IMAGES:
        mine, theirs = getattr(result, name), getattr(here, name)
        assert (mine is None) == (theirs is None), name
        if mine is not None:
            np.testing.assert_array_equal(sitk.GetArrayViewFromImage(mine), sitk.GetArrayViewFromImage(theirs), name)
            assert mine.GetOrigin() == theirs.GetOrigin() and mine.GetSpacing() == theirs.GetSpacing()
            assert mine.GetDirection() == theirs.GetDirection() and mine.GetPixelID() == theirs.GetPixelID()
    assert result.ct is ph.ct
    assert [r["id"] for r in result.lesions] == [r["id"] for r in here.lesions]
    for mine, theirs in zip(result.lesions, here.lesions):
        assert mine["volume_ml"] == pytest.approx(theirs["volume_ml"]) and mine["segments"] == theirs["segments"]
    assert result.couinaud_volumes_ml == pytest.approx(here.couinaud_volumes_ml)
    assert result.warnings == here.warnings and result.couinaud_method == here.couinaud_method
    assert set(result.landmarks) == set(ph.landmarks)
    np.testing.assert_allclose(result.options.lesion_points["click"], points["click"])
    assert pipeline.summary_text(dataclasses.replace(result, timings=here.timings)) == pipeline.summary_text(here)


def test_cancel_ends_the_worker_within_two_seconds_and_no_result_is_read(phantom_case, tmp_path):
    ph = phantom_case
    job = background.write_job(tmp_path / "job", ph.ct, ph.landmarks, None, OPTIONS)
    run = background.BackgroundRun.start(job)
    start = time.perf_counter()
    while not run.poll():  # wait until it works inside a stage
        assert run.running() and time.perf_counter() - start < 60
        time.sleep(0.1)
    assert run.cancel() < 2.0
    assert not run.running()
    with pytest.raises(pipeline.Cancelled):
        run.result(ph.ct)
    assert not (job / background.RESULT_FILE).exists()


def test_bad_input_in_the_worker_comes_back_as_its_message(phantom_case, tmp_path):
    ph = phantom_case
    far = {**ph.landmarks, "IVC": np.asarray(ph.landmarks["IVC"], float) + [0.0, 0.0, 5000.0]}
    run = background.BackgroundRun.start(background.write_job(tmp_path / "job", ph.ct, far, None, OPTIONS))
    _wait(run)
    assert run.process.returncode == 2
    with pytest.raises(InputError, match="IVC"):
        run.result(ph.ct)


def test_a_job_folder_is_used_once_and_a_running_job_has_no_result(phantom_case, tmp_path):
    ph = phantom_case
    job = background.write_job(tmp_path / "job", ph.ct, ph.landmarks, ph.truth_couinaud > 0, OPTIONS)
    with pytest.raises(InputError, match="not empty"):
        background.write_job(job, ph.ct, ph.landmarks, None, OPTIONS)
    ct, landmarks, liver, options = background.read_job(job)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(ct), sitk.GetArrayViewFromImage(ph.ct))
    assert ct.GetDirection() == ph.ct.GetDirection() and ct.GetOrigin() == ph.ct.GetOrigin()
    assert liver is not None and options == OPTIONS
    assert all(np.allclose(landmarks[k], ph.landmarks[k]) for k in ph.landmarks)
    run = background.BackgroundRun.start(job)
    try:
        with pytest.raises(RuntimeError, match="not finished"):
            run.result(ph.ct)
    finally:
        run.cancel()
