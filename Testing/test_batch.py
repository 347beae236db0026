"""`liverloc batch`: a cohort on a Dask LocalCluster, each case as `liverloc run` writes it; a failed case recorded,
never stopping the others; a second run resumes; a bad CSV refused before any work."""

from __future__ import annotations

import contextlib
import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from dicom_series import write_series
from LiverLocalizationLib import batch, cli, labels, segfile
from LiverLocalizationLib.errors import InputError
from LiverLocalizationLib.phantom import generate_phantom, write_phantom

SEEDS = {"case_a": (11, 1), "case_b": (12, 2), "case_c": (13, 1),  # case → (seed, lesions): six small phantoms
         "case_d": (14, 0), "case_e": (15, 2), "case_f": (16, 1)}
DICOM = "case_dicom"  # case_c's phantom as a DICOM series folder: its results also hold the DICOM SEG
DICOM_OF = "case_c"
SERIES_UID = "1.2.826.0.1.3680043.2.1125.31.1"
DICOM_TAGS = {"0010|0010": "Phantom^C", "0010|0020": "LL-31-C", "0020|0052": "1.2.826.0.1.3680043.2.1125.31.9"}
KILLED = ("case_a", "case_b", "case_c")  # the kill test's cases (fewer, for CI time)
RUN_OPTIONS = ["--no-classify", "--no-figures"]
VOLATILE = {"timings_s"}  # report.json keys that differ between two runs of one case


def read_rows(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """Six small phantoms (the smallest size liverloc phantom makes: 2 x 2 x 2.5 mm voxels, every structure of a
    real run), case_c's CT again as a DICOM series folder (the same voxels and geometry) and a truncated CT, listed
    in cases.csv with paths relative to it."""
    root = tmp_path_factory.mktemp("cohort")
    lines = ["case,ct,landmarks,liver_mask"]
    for case, (seed, lesions) in SEEDS.items():
        write_phantom(generate_phantom(seed, size="small", n_lesions=lesions), root / case)
        lines.append(f"{case},{case}/ct.nii.gz,{case}/landmarks.mrk.json,")
    image = sitk.ReadImage(str(root / DICOM_OF / "ct.nii.gz"))
    assert image.GetDirection() == (1, 0, 0, 0, 1, 0, 0, 0, 1) and image.GetSpacing()[0] == image.GetSpacing()[1]
    voxels = sitk.GetArrayFromImage(image)
    write_series(root / f"{DICOM}_ct", [image.GetSpacing()[2] * k for k in range(len(voxels))], uid=SERIES_UID,
                 pixels=voxels, spacing=image.GetSpacing()[0], corner=image.GetOrigin(), tags=DICOM_TAGS)
    lines.append(f"{DICOM},{DICOM}_ct,{DICOM_OF}/landmarks.mrk.json,")
    data = (root / "case_a" / "ct.nii.gz").read_bytes()
    (root / "corrupt.nii.gz").write_bytes(data[: len(data) // 3])
    lines.append("corrupt,corrupt.nii.gz,,")
    (root / "cases.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def single_runs(cohort, tmp_path_factory) -> dict[str, Path]:
    """Each phantom of the cohort run alone by `liverloc run` (the reference a batch must reproduce exactly)."""
    root = tmp_path_factory.mktemp("single")
    folders = {}
    for case in SEEDS:
        folders[case] = root / case
        assert cli.main(["-q", "run", str(cohort / case / "ct.nii.gz"), "--landmarks",
                         str(cohort / case / "landmarks.mrk.json"), "--out", str(folders[case]), *RUN_OPTIONS]) == 0
    return folders


def assert_same_results(batched: Path, alone: Path, extra: frozenset = frozenset(), mm: float = 0.0) -> None:
    """A case's batch results equal its single run's: the same files (and `extra` ones), the same report (but its
    timings) and the same voxels and geometry in every image (spacing and origin within `mm`: a DICOM series gives
    them as decimal text, e.g. a slice spacing of 2.5000000000000004 from positions 2.5 mm apart)."""
    names = set(json.loads((alone / "run.json").read_text())["files"])
    assert set(json.loads((batched / "run.json").read_text())["files"]) == names | extra
    reports = [json.loads((folder / "report.json").read_text()) for folder in (batched, alone)]
    assert [{k: v for k, v in r.items() if k not in VOLATILE} for r in reports][0] == \
        {k: v for k, v in reports[1].items() if k not in VOLATILE}
    for name in sorted(n for n in names if n.endswith((".nii.gz", ".nrrd"))):
        images = [sitk.ReadImage(str(folder / name)) for folder in (batched, alone)]
        assert images[0].GetSize() == images[1].GetSize(), name
        assert np.allclose(images[0].GetSpacing(), images[1].GetSpacing(), rtol=0, atol=mm), name
        assert np.allclose(images[0].GetOrigin(), images[1].GetOrigin(), rtol=0, atol=mm), name
        assert images[0].GetDirection() == images[1].GetDirection(), name
        assert np.array_equal(*[sitk.GetArrayViewFromImage(image) for image in images]), name


def assert_seg_of_the_series(folder: Path, series: Path) -> None:
    """folder/segmentation.dcm is a DICOM SEG that references every file of the DICOM series it was made from, and
    carries the segments of folder/segmentation.seg.nrrd: the same names, coded terms and voxels, slice by slice."""
    hd = pytest.importorskip("highdicom", reason="highdicom is not installed (pip install -e '.[dicom]')")
    import pydicom

    seg = pydicom.dcmread(folder / "segmentation.dcm")
    sources = {}  # SOP Instance UID → its slice's height (mm)
    for file in series.iterdir():
        header = pydicom.dcmread(file, stop_before_pixels=True)
        sources[header.SOPInstanceUID] = float(header.ImagePositionPatient[2])
        assert seg.StudyInstanceUID == header.StudyInstanceUID and seg.PatientID == header.PatientID == "LL-31-C"
        assert seg.FrameOfReferenceUID == header.FrameOfReferenceUID
    assert seg.Modality == "SEG" and seg.SeriesInstanceUID != SERIES_UID
    (referenced,) = seg.ReferencedSeriesSequence
    assert referenced.SeriesInstanceUID == SERIES_UID
    assert sorted(item.ReferencedSOPInstanceUID for item in referenced.ReferencedInstanceSequence) == sorted(sources)

    _, segments = segfile.read_seg_nrrd(folder / "segmentation.seg.nrrd")
    assert len(segments) > 1 + 9  # the liver, the lesions, vessels and the nine Couinaud segments
    assert [item.SegmentLabel for item in seg.SegmentSequence] == [segment["name"] for segment in segments]
    for item, segment in zip(seg.SegmentSequence, segments):
        for kind, sequence in (("type", "SegmentedPropertyTypeCodeSequence"),
                               ("category", "SegmentedPropertyCategoryCodeSequence")):
            code = item[sequence][0]
            assert labels.Code(code.CodingSchemeDesignator, code.CodeValue, code.CodeMeaning) == \
                segment["terminology"][kind], (segment["name"], kind)
    in_ct_order = sorted(sources, key=sources.get)  # the CT's slice z is the z-th lowest
    pixels = hd.seg.segread(folder / "segmentation.dcm").get_pixels_by_source_instance(in_ct_order)
    assert np.array_equal(pixels, np.stack([segment["mask"] for segment in segments], axis=-1))


def assert_tables_match_reports(out: Path, cases) -> dict[str, dict]:
    """cases.csv and lesions.csv hold what each case's report.json says; returns cases.csv's rows by case."""
    rows = {row["case"]: row for row in read_rows(out / "cases.csv")}
    lesion_rows = read_rows(out / "lesions.csv")
    for case in cases:
        report = json.loads((out / case / "report.json").read_text())
        assert int(rows[case]["n_lesions"]) == len(report["lesions"])
        assert float(rows[case]["liver_ml"]) == pytest.approx(report["liver_volume_ml"], abs=1e-3)
        for name, ml in (report["couinaud_volumes_ml"] or {}).items():
            assert float(rows[case][f"segment_{name}_ml"]) == pytest.approx(ml, abs=1e-3)
        mine = [row for row in lesion_rows if row["case"] == case]
        assert len(mine) == len(report["lesions"])
        for row, lesion in zip(mine, report["lesions"]):
            assert row["lesion"] == str(lesion["id"]) and row["main_segment"] == (lesion.get("main_segment") or "")
            assert float(row["volume_ml"]) == pytest.approx(lesion["volume_ml"], abs=1e-3)
            assert float(row["max_diameter_mm"]) == pytest.approx(lesion["max_diameter_mm"], abs=1e-3)
            assert row["segments"] == ";".join(lesion.get("segments") or [])
    return rows


def test_a_bad_csv_is_refused_before_any_work_one_line_per_row(tmp_path, capsys):
    (tmp_path / "ct.nii.gz").write_bytes(b"not read: the CSV is refused first")
    table = tmp_path / "cases.csv"
    table.write_text("case,ct\none,ct.nii.gz\none,ct.nii.gz\ntwo,missing.nii.gz\n../up,ct.nii.gz\nthree,\n",
                     encoding="utf-8")
    out = tmp_path / "out"
    assert cli.main(["-q", "batch", str(table), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "4 problem(s), nothing was run" in err
    assert "row 3 (case 'one'): case id 'one' already used on row 2" in err
    assert "row 4 (case 'two'): ct missing.nii.gz: no such file" in err
    assert "row 5 (case '../up'): the case id must be" in err
    assert "row 6 (case 'three'): no ct given" in err
    assert not out.exists()

    table.write_text("id,image\none,ct.nii.gz\n", encoding="utf-8")
    assert cli.main(["-q", "batch", str(table), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "missing column(s) case, ct" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_an_input_inside_its_case_folder_is_refused(tmp_path):
    (tmp_path / "out" / "one").mkdir(parents=True)
    (tmp_path / "out" / "one" / "ct.nii.gz").write_bytes(b"x")
    (tmp_path / "cases.csv").write_text("case,ct\none,out/one/ct.nii.gz\n", encoding="utf-8")
    with pytest.raises(InputError, match="row 2 .* lies in the --out folder"):
        batch.read_cases(tmp_path / "cases.csv", tmp_path / "out")


def test_a_failure_is_one_line():
    assert batch.one_line(InputError("bad\nthing")) == "bad thing"
    assert batch.one_line(RuntimeError("x\n  y")) == "RuntimeError: x y"
    assert len(batch.one_line(ValueError("z" * 1000))) == batch.ERROR_CHARS


@pytest.mark.slow
def test_batch_on_two_workers_matches_single_runs_records_the_failure_and_resumes(cohort, single_runs, tmp_path,
                                                                                   capsys):
    """Six phantoms, one of them again as a DICOM folder, and a corrupt CT on a 2-worker LocalCluster: the seven
    results equal their single runs file by file (the DICOM case with the DICOM SEG of its series besides), the
    corrupt one is one recorded failure, and a second run skips the seven and redoes the (now fixed) one."""
    pytest.importorskip("distributed", reason="dask[distributed] is not installed (pip install -e '.[batch]')")
    out = tmp_path / "results"
    argv = ["batch", str(cohort / "cases.csv"), "--out", str(out), "--workers", "2", "--memory-limit", "2",
            *RUN_OPTIONS]
    assert cli.main(argv) == 1  # one case failed; the others completed
    captured = capsys.readouterr()
    assert sum("/8 " in line for line in captured.err.splitlines()) == 8  # a progress line per finished case
    assert "8 case(s): 7 ok, 0 skipped (up to date), 1 failed" in captured.out
    assert "corrupt: " in captured.out and "cut short" in captured.out
    rows = assert_tables_match_reports(out, [*SEEDS, DICOM])
    assert list(rows) == [*SEEDS, DICOM, "corrupt"]
    assert rows["corrupt"]["status"] == "failed" and "cut short" in rows["corrupt"]["error"]
    assert "\n" not in rows["corrupt"]["error"] and not (out / "corrupt").exists()
    assert rows["corrupt"]["liver_ml"] == rows["corrupt"]["n_lesions"] == ""
    assert len(read_rows(out / "lesions.csv")) == sum(int(rows[case]["n_lesions"]) for case in [*SEEDS, DICOM])
    workers = {rows[case]["worker"] for case in rows}
    assert len(workers) == 2 and all(w.startswith("tcp://127.0.0.1:") for w in workers)  # both workers took cases
    for case in SEEDS:
        assert rows[case]["status"] == "ok" and float(rows[case]["seconds"]) > 0, rows[case]
        manifest = json.loads((out / case / "run.json").read_text())
        assert manifest["generator"] == "liverloc run"
        assert manifest["inputs"]["CT"]["path"] == str(cohort / case / "ct.nii.gz")
        assert_same_results(out / case, single_runs[case])
    for case in SEEDS:
        assert not (out / case / "segmentation.dcm").exists()  # a NIfTI CT has no series to reference
    assert rows[DICOM]["status"] == "ok", rows[DICOM]
    assert json.loads((out / DICOM / "run.json").read_text())["inputs"]["CT"]["path"] == str(cohort / f"{DICOM}_ct")
    assert_same_results(out / DICOM, single_runs[DICOM_OF], extra=frozenset({"segmentation.dcm"}), mm=1e-5)
    assert_seg_of_the_series(out / DICOM, cohort / f"{DICOM}_ct")

    # Resume: the six complete cases are skipped (their files untouched), the failed one is run again, now fixed.
    stamps = {case: (out / case / "run.json").stat().st_mtime_ns for case in [*SEEDS, DICOM]}
    shutil.copyfile(cohort / "case_c" / "ct.nii.gz", cohort / "corrupt.nii.gz")
    capsys.readouterr()
    assert cli.main(argv) == 0
    rows = {row["case"]: row for row in read_rows(out / "cases.csv")}
    assert [rows[case]["status"] for case in [*SEEDS, DICOM]] == ["skipped"] * 7  # a DICOM folder's checksum too
    assert {case: (out / case / "run.json").stat().st_mtime_ns for case in [*SEEDS, DICOM]} == stamps
    assert rows["corrupt"]["status"] == "ok" and rows["corrupt"]["error"] == ""
    assert float(rows["corrupt"]["liver_ml"]) > 0 and (out / "corrupt" / "run.json").is_file()
    assert "7 skipped" in capsys.readouterr().out
    assert_tables_match_reports(out, [*SEEDS, DICOM, "corrupt"])


@pytest.mark.slow
def test_batch_on_an_existing_cluster_given_its_scheduler_address(cohort, single_runs, tmp_path, capsys):
    """`--scheduler ADDRESS`: a separate `dask scheduler` and `dask worker` (two processes, as on another
    machine) run the cases; the results equal the single runs, the corrupt CT is one recorded failure, every
    case ran on one of that cluster's workers, and no local cluster was started."""
    pytest.importorskip("distributed", reason="dask[distributed] is not installed (pip install -e '.[batch]')")
    import os
    import signal
    import subprocess
    import sys
    import time

    import distributed

    table = tmp_path / "cases.csv"
    table.write_text("case,ct,landmarks\n"
                     + "".join(f"{case},{cohort / case / 'ct.nii.gz'},{cohort / case / 'landmarks.mrk.json'}\n"
                               for case in ("case_b", "case_d"))
                     + f"broken,{tmp_path / 'broken.nii.gz'},\n", encoding="utf-8")
    data = (cohort / "case_b" / "ct.nii.gz").read_bytes()
    (tmp_path / "broken.nii.gz").write_bytes(data[: len(data) // 2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(batch.__file__).resolve().parents[1]),
                                                         os.environ.get("PYTHONPATH", "")])}
    scheduler_file = tmp_path / "scheduler.json"
    processes = []
    try:
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_scheduler", "--scheduler-file",
             str(scheduler_file), "--host", "127.0.0.1", "--port", "0", "--no-dashboard"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        start = time.perf_counter()
        while not scheduler_file.is_file():
            assert time.perf_counter() - start < 60, "the scheduler did not start"
            time.sleep(0.2)
        address = json.loads(scheduler_file.read_text())["address"]
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_worker", address, "--nworkers", "2",
             "--nthreads", "1", "--memory-limit", "2GB", "--no-dashboard", "--host", "127.0.0.1"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        with distributed.Client(address, timeout="30s") as client:
            client.wait_for_workers(2, timeout=60)
            cluster_workers = set(client.scheduler_info()["workers"])

        def no_local_cluster(*args, **kwargs):
            raise AssertionError("a LocalCluster was started although --scheduler was given")

        original = distributed.LocalCluster
        distributed.LocalCluster = no_local_cluster
        try:
            out = tmp_path / "results"
            assert cli.main(["-q", "batch", str(table), "--out", str(out), "--scheduler", address, *RUN_OPTIONS]) == 1
        finally:
            distributed.LocalCluster = original
    finally:
        for process in reversed(processes):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    rows = assert_tables_match_reports(out, ("case_b", "case_d"))
    assert [(case, row["status"]) for case, row in rows.items()] == [("case_b", "ok"), ("case_d", "ok"),
                                                                     ("broken", "failed")]
    assert "cut short" in rows["broken"]["error"] and not (out / "broken").exists()
    assert {row["worker"] for row in rows.values()} <= cluster_workers
    for case in ("case_b", "case_d"):
        assert_same_results(out / case, single_runs[case])
    assert "1 failed" in capsys.readouterr().out


def test_an_unreachable_scheduler_is_one_line_exit_2_and_nothing_written(cohort, tmp_path, capsys):
    pytest.importorskip("distributed", reason="dask[distributed] is not installed (pip install -e '.[batch]')")
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = tmp_path / "results"
    assert cli.main(["-q", "batch", str(cohort / "cases.csv"), "--out", str(out), "--scheduler",
                     f"tcp://127.0.0.1:{port}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"--scheduler tcp://127.0.0.1:{port}: cannot connect" in err
    assert not out.exists() or sorted(p.name for p in out.iterdir()) == []


def test_a_batch_killed_mid_run_resumes_without_losing_or_duplicating_a_case(cohort, tmp_path):
    """SIGKILL to the whole batch (its process and its Dask workers) once the first case is complete and others are
    being written: the next run takes over the dead batch's lock, keeps the complete case as it is, removes the
    killed cases' staging folders and locks, runs the rest, and lists every case and every lesion exactly once."""
    pytest.importorskip("distributed", reason="dask[distributed] is not installed (pip install -e '.[batch]')")
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "results"
    data = (cohort / "case_a" / "ct.nii.gz").read_bytes()  # the cohort's own corrupt file is fixed by another test
    (tmp_path / "corrupt.nii.gz").write_bytes(data[: len(data) // 3])
    lines = ["case,ct,landmarks,liver_mask"]
    lines += [f"{case},{cohort / case / 'ct.nii.gz'},{cohort / case / 'landmarks.mrk.json'}," for case in KILLED]
    lines.append(f"corrupt,{tmp_path / 'corrupt.nii.gz'},,")
    (tmp_path / "cases.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    argv = ["batch", str(tmp_path / "cases.csv"), "--out", str(out), "--workers", "2", "--memory-limit", "2",
            "--no-classify", "--no-figures"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(batch.__file__).resolve().parents[1]),
                                                         os.environ.get("PYTHONPATH", "")])}
    first = subprocess.Popen([sys.executable, "-m", "LiverLocalizationLib.cli", "-q", *argv], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    start, done = time.perf_counter(), []
    try:
        while not done:
            assert first.poll() is None, "the batch ended before it could be killed"
            assert time.perf_counter() - start < 300, "no case finished"
            done = [case for case in KILLED if (out / case / "run.json").is_file()]
            time.sleep(0.2)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    stamp = (out / done[0] / "run.json").stat().st_mtime_ns
    assert (tmp_path / ".results.lock").is_file()  # the dead batch's lock was left behind

    assert cli.main(["-q", *argv]) == 1  # the corrupt case fails again; everything else completes
    rows = read_rows(out / "cases.csv")
    assert [row["case"] for row in rows] == [*KILLED, "corrupt"]
    statuses = {row["case"]: row["status"] for row in rows}
    assert statuses[done[0]] == "skipped" and (out / done[0] / "run.json").stat().st_mtime_ns == stamp
    assert all(statuses[case] in ("ok", "skipped") for case in KILLED) and statuses["corrupt"] == "failed"
    lesion_rows = read_rows(out / "lesions.csv")
    for case in KILLED:
        report = json.loads((out / case / "report.json").read_text())
        assert sum(row["case"] == case for row in lesion_rows) == len(report["lesions"])
        listed = set(json.loads((out / case / "run.json").read_text())["files"]) | {"run.json"}
        assert {p.name for p in (out / case).iterdir()} == listed  # nothing half-written beside the results
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    leftovers += [p.name for p in out.iterdir() if p.name.startswith(".")]
    assert leftovers == []


@pytest.mark.slow
def test_a_case_over_the_memory_limit_is_one_failed_line_and_the_other_completes(cohort, tmp_path):
    """A CT that needs several GB (300 slices of 512 x 512) beside a small phantom, each worker under 1 GB: Dask's
    nanny stops the big case's worker, the case is tried once more and then recorded as failed with one line naming
    the limit, nothing of it is left in --out, and the phantom completes; the batch ends on its own (run in a
    subprocess with a deadline, so that a retry loop or a hang fails the test instead of stalling it)."""
    pytest.importorskip("distributed", reason="dask[distributed] is not installed (pip install -e '.[batch]')")
    import os
    import signal
    import subprocess
    import sys

    voxels = np.full((300, 512, 512), -1000, np.int16)  # 0.16 GB as int16, compresses to 1 MB; its run takes > 3 GB
    voxels[:, 100:400, 80:430] = 40
    voxels[50:250, 150:330, 100:300] = 100
    image = sitk.GetImageFromArray(voxels)
    image.SetSpacing((0.7, 0.7, 1.0))
    sitk.WriteImage(image, str(tmp_path / "big.nii.gz"))
    del voxels, image
    (tmp_path / "cases.csv").write_text(
        "case,ct,landmarks\n"
        f"big,{tmp_path / 'big.nii.gz'},\n"
        f"case_c,{cohort / 'case_c' / 'ct.nii.gz'},{cohort / 'case_c' / 'landmarks.mrk.json'}\n", encoding="utf-8")
    out = tmp_path / "results"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(batch.__file__).resolve().parents[1]),
                                                         os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen(
        [sys.executable, "-m", "LiverLocalizationLib.cli", "batch", str(tmp_path / "cases.csv"), "--out", str(out),
         "--workers", "2", "--memory-limit", "1", *RUN_OPTIONS],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        printed, _ = process.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail("the batch did not end within 240 s: a case over the memory limit was retried or waited on")
    assert process.returncode == 1, printed  # one case failed, the other completed
    rows = {row["case"]: row for row in read_rows(out / "cases.csv")}
    assert rows["case_c"]["status"] == "ok" and float(rows["case_c"]["liver_ml"]) > 0
    assert_tables_match_reports(out, ["case_c"])
    error = rows["big"]["status"], rows["big"]["error"]
    assert error[0] == "failed" and error[1].startswith("the worker exceeded its memory limit of 1 GB ("), error
    assert "; 2 tries); raise --memory-limit or run fewer workers" in error[1] and "\n" not in error[1], error
    assert f"  big: {error[1]}" in printed.splitlines()
    assert sorted(p.name for p in out.iterdir()) == ["case_c", "cases.csv", "lesions.csv"]  # no staging, no lock


def test_a_killed_worker_outside_the_memory_limit_is_one_line_too():
    """A KilledWorker with no memory event for its worker (the system's OOM killer, a signal, a crash) is one line
    that does not blame --memory-limit; with the nanny's event it names the limit and the memory in use."""
    distributed = pytest.importorskip("distributed", reason="dask[distributed] is not installed")

    class Client:
        def __init__(self, events):
            self.events = events

        def get_events(self, topic):
            assert topic == "worker-restart-memory"
            return [(0.0, event) for event in self.events]

    from types import SimpleNamespace

    worker = SimpleNamespace(address="tcp://10.0.0.2:4000", memory_limit=int(4e9))  # what KilledWorker's carries
    killed = distributed.KilledWorker("liverloc-x", worker, 1)
    outside = batch.killed_line(Client([{"worker": "tcp://10.0.0.9:1", "rss": int(5e9)}]), killed)
    assert outside.startswith("the worker process running this case died on each of 2 tries") and "\n" not in outside
    assert "memory limit" not in outside
    memory = batch.killed_line(Client([{"worker": "tcp://10.0.0.2:4000", "pid": 7, "rss": int(3.9e9)}]), killed)
    assert memory == ("the worker exceeded its memory limit of 4 GB (3.90 GB in use when Dask stopped it; 2 tries); "
                      "raise --memory-limit or run fewer workers")


@pytest.mark.parametrize("header, row, message", [
    ("case,ct,landmark", "one,ct.nii.gz,clicks.mrk.json", "unknown column(s) 'landmark'"),
    ("case,ct,ct", "one,ct.nii.gz,ct.nii.gz", "column(s) named twice: ct"),
    ("case,ct", "one,ct.nii.gz,extra,more", "row 2 (case 'one'): 4 cells where the header names 2"),
    ("case,ct", "One,ct.nii.gz\none,ct.nii.gz", "row 3 (case 'one'): case id 'one' already used on row 2 as 'One'"),
])
def test_a_csv_that_would_run_silently_wrong_is_refused(tmp_path, capsys, header, row, message):
    """A misspelt column ran every case without its landmarks; a column named twice, cells beyond the header and
    ids differing only in letter case (one folder on macOS and Windows) were taken without a word."""
    (tmp_path / "ct.nii.gz").write_bytes(b"not read: the CSV is refused first")
    (tmp_path / "cases.csv").write_text(f"{header}\n{row}\n", encoding="utf-8")
    out = tmp_path / "out"
    assert cli.main(["-q", "batch", str(tmp_path / "cases.csv"), "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_blank_lines_and_a_bom_are_read_and_rows_named_by_their_line(tmp_path):
    (tmp_path / "ct.nii.gz").write_bytes(b"x")
    (tmp_path / "cases.csv").write_text("\ufeffcase,ct\n\none,ct.nii.gz\n\ntwo,missing.nii.gz\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"row 5 \(case 'two'\): ct missing.nii.gz: no such file"):
        batch.read_cases(tmp_path / "cases.csv", tmp_path / "out")
    (tmp_path / "cases.csv").write_text("\ufeffcase,ct\n\none,ct.nii.gz\n\n", encoding="utf-8")
    assert [case.case for case in batch.read_cases(tmp_path / "cases.csv", tmp_path / "out")] == ["one"]


def test_tables_never_replace_the_csv_or_a_users_file_and_no_input_lies_in_out(tmp_path, capsys):
    """`--out` the CSV's own folder replaced the user's cases.csv with the results table; a cases.csv a batch did
    not write is never replaced; a CT anywhere in --out (not only in its case's folder) is refused."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "ct.nii.gz").write_bytes(b"x")
    table = tmp_path / "data" / "cases.csv"
    table.write_text("case,ct\none,ct.nii.gz\n", encoding="utf-8")
    before = table.read_bytes()
    assert cli.main(["-q", "batch", str(table), "--out", str(tmp_path / "data")]) == 2
    assert "cases.csv lies in the --out folder" in capsys.readouterr().err and table.read_bytes() == before

    out = tmp_path / "out"
    out.mkdir()
    (out / "lesions.csv").write_text("my own notes\n", encoding="utf-8")
    elsewhere = tmp_path / "cases.csv"
    elsewhere.write_text(f"case,ct\none,{tmp_path / 'data' / 'ct.nii.gz'}\n", encoding="utf-8")
    assert cli.main(["-q", "batch", str(elsewhere), "--out", str(out)]) == 2
    assert "holds a lesions.csv that liverloc batch did not write" in capsys.readouterr().err
    assert (out / "lesions.csv").read_text() == "my own notes\n" and sorted(p.name for p in out.iterdir()) == [
        "lesions.csv"]

    elsewhere.write_text("case,ct\none,ct.nii.gz\n", encoding="utf-8")
    (tmp_path / "ct.nii.gz").write_bytes(b"x")
    with pytest.raises(InputError, match="row 2 .* lies in the --out folder"):
        batch.read_cases(elsewhere, tmp_path)
