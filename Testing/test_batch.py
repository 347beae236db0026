"""`liverloc batch`: a cohort on a Dask LocalCluster, each case as `liverloc run` writes it; a failed case recorded,
never stopping the others; a second run resumes; a bad CSV refused before any work."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from LiverLocalizationLib import batch, cli
from LiverLocalizationLib.errors import InputError
from LiverLocalizationLib.phantom import generate_phantom, write_phantom

SEEDS = {"case_a": (11, 1), "case_b": (12, 2), "case_c": (13, 1)}  # case → (seed, lesions)


def read_rows(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """Three small phantoms and a truncated CT, listed in cases.csv with paths relative to it."""
    root = tmp_path_factory.mktemp("cohort")
    lines = ["case,ct,landmarks,liver_mask"]
    for case, (seed, lesions) in SEEDS.items():
        write_phantom(generate_phantom(seed, size="small", n_lesions=lesions), root / case)
        lines.append(f"{case},{case}/ct.nii.gz,{case}/landmarks.mrk.json,")
    data = (root / "case_a" / "ct.nii.gz").read_bytes()
    (root / "corrupt.nii.gz").write_bytes(data[: len(data) // 3])
    lines.append("corrupt,corrupt.nii.gz,,")
    (root / "cases.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


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
def test_batch_on_two_workers_matches_single_runs_records_the_failure_and_resumes(cohort, tmp_path, capsys):
    pytest.importorskip("distributed", reason="dask[distributed] is not installed (pip install -e '.[batch]')")
    out = tmp_path / "results"
    argv = ["batch", str(cohort / "cases.csv"), "--out", str(out), "--workers", "2", "--memory-limit", "2",
            "--no-classify", "--no-figures"]
    assert cli.main(argv) == 1  # one case failed; the others completed
    captured = capsys.readouterr()
    assert sum("/4 " in line for line in captured.err.splitlines()) == 4  # a progress line per finished case
    rows = {row["case"]: row for row in read_rows(out / "cases.csv")}
    assert list(rows) == [*SEEDS, "corrupt"]
    assert rows["corrupt"]["status"] == "failed" and "cut short" in rows["corrupt"]["error"]
    assert "\n" not in rows["corrupt"]["error"] and not (out / "corrupt").exists()
    lesion_rows = read_rows(out / "lesions.csv")
    for case in SEEDS:
        assert rows[case]["status"] == "ok", rows[case]
        report = json.loads((out / case / "report.json").read_text())
        manifest = json.loads((out / case / "run.json").read_text())
        assert manifest["generator"] == "liverloc run" and "report.json" in manifest["files"]
        assert int(rows[case]["n_lesions"]) == len(report["lesions"])
        assert float(rows[case]["liver_ml"]) == pytest.approx(report["liver_volume_ml"], abs=1e-3)
        assert float(rows[case]["segment_VIII_ml"]) == pytest.approx(report["couinaud_volumes_ml"]["VIII"], abs=1e-3)
        assert sum(r["case"] == case for r in lesion_rows) == len(report["lesions"])

    # The same case run alone by `liverloc run` gives the same report and the same lesion voxels.
    single = tmp_path / "single"
    assert cli.main(["-q", "run", str(cohort / "case_b" / "ct.nii.gz"), "--landmarks",
                     str(cohort / "case_b" / "landmarks.mrk.json"), "--out", str(single),
                     "--no-classify", "--no-figures"]) == 0
    alone = json.loads((single / "report.json").read_text())
    batched = json.loads((out / "case_b" / "report.json").read_text())
    assert batched["liver_volume_ml"] == alone["liver_volume_ml"]
    assert batched["couinaud_volumes_ml"] == alone["couinaud_volumes_ml"]
    assert len(batched["lesions"]) == len(alone["lesions"]) >= 1
    voxels = [sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "lesions.nii.gz"))) for folder in (single, out / "case_b")]
    assert np.array_equal(*voxels)

    # Resume: the three complete cases are skipped (their files untouched), the failed one is run again, now fixed.
    stamps = {case: (out / case / "run.json").stat().st_mtime_ns for case in SEEDS}
    shutil.copyfile(cohort / "case_c" / "ct.nii.gz", cohort / "corrupt.nii.gz")
    capsys.readouterr()
    assert cli.main(argv) == 0
    rows = {row["case"]: row for row in read_rows(out / "cases.csv")}
    assert [rows[case]["status"] for case in SEEDS] == ["skipped"] * 3
    assert {case: (out / case / "run.json").stat().st_mtime_ns for case in SEEDS} == stamps
    assert rows["corrupt"]["status"] == "ok" and rows["corrupt"]["error"] == ""
    assert float(rows["corrupt"]["liver_ml"]) > 0 and (out / "corrupt" / "run.json").is_file()
    assert "3 skipped" in capsys.readouterr().out


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
    lines += [f"{case},{cohort / case / 'ct.nii.gz'},{cohort / case / 'landmarks.mrk.json'}," for case in SEEDS]
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
            done = [case for case in SEEDS if (out / case / "run.json").is_file()]
            time.sleep(0.2)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    stamp = (out / done[0] / "run.json").stat().st_mtime_ns
    assert (tmp_path / ".results.lock").is_file()  # the dead batch's lock was left behind

    assert cli.main(["-q", *argv]) == 1  # the corrupt case fails again; everything else completes
    rows = read_rows(out / "cases.csv")
    assert [row["case"] for row in rows] == [*SEEDS, "corrupt"]
    statuses = {row["case"]: row["status"] for row in rows}
    assert statuses[done[0]] == "skipped" and (out / done[0] / "run.json").stat().st_mtime_ns == stamp
    assert all(statuses[case] in ("ok", "skipped") for case in SEEDS) and statuses["corrupt"] == "failed"
    lesion_rows = read_rows(out / "lesions.csv")
    for case in SEEDS:
        report = json.loads((out / case / "report.json").read_text())
        assert sum(row["case"] == case for row in lesion_rows) == len(report["lesions"])
        listed = set(json.loads((out / case / "run.json").read_text())["files"]) | {"run.json"}
        assert {p.name for p in (out / case).iterdir()} == listed  # nothing half-written beside the results
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    leftovers += [p.name for p in out.iterdir() if p.name.startswith(".")]
    assert leftovers == []
