"""Atomic results (issue 32): a result set appears in --out whole, with its manifest, or not at all.

outputs.atomic_results is driven with fake writers (fast): a failure, Ctrl-C or SIGTERM mid-write leaves --out as it
was and no staging folder; earlier results are refused without --overwrite and replaced as a whole with it; files
liverloc did not write are never deleted; a held lock refuses a second command. The same rules are checked through
`liverloc run` on a small phantom, its pipeline run once and replayed (only the writing is repeated), and through
`liverloc evaluate-classifier` with a fake evaluation.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import signal
from pathlib import Path

import pytest

from LiverLocalizationLib import cli, outputs, pipeline
from LiverLocalizationLib.errors import InputError
from cli_checks import assert_one_clear_line, run_cli


# ----------------------------------------------------------------------------- helpers

def snapshot(folder: Path) -> dict:
    """Every file under a folder (hidden ones included) with its bytes and modification time."""
    return {p.relative_to(folder).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_manifest_matches(folder: Path) -> dict:
    """run.json lists exactly the other files in the folder, each with its true size and SHA-256."""
    manifest = json.loads((folder / "run.json").read_text(encoding="utf-8"))
    present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} - {"run.json"}
    assert set(manifest["files"]) == present
    for name, record in manifest["files"].items():
        data = (folder / name).read_bytes()
        assert record == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}, name
    return manifest


def write_set(folder: Path, names: list[str]) -> None:
    """A fake writer: one small file per name."""
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(f"{name} of this run\n", encoding="utf-8")


def fake_run(out: Path, names: list[str], overwrite: bool = False, inputs: dict | None = None) -> outputs.Results:
    with outputs.atomic_results(out, "liverloc run", inputs or {}, {"seed": 1}, overwrite) as results:
        write_set(results.folder, names)
    return results


# ----------------------------------------------------------------------------- outputs.atomic_results

def test_results_appear_only_when_complete_with_a_manifest_of_inputs_and_files(tmp_path):
    ct = tmp_path / "ct.nii.gz"
    ct.write_bytes(b"not really a CT")
    dicom = tmp_path / "dicom"
    dicom.mkdir()
    (dicom / "1.dcm").write_bytes(b"slice 1")
    out = tmp_path / "new" / "result"
    with outputs.atomic_results(out, "liverloc run", {"CT": ct, "--series": dicom, "--none": None},
                                {"seed": 1}) as results:
        write_set(results.folder, ["report.json", "sub/figure.png"])
        assert not out.exists() and results.folder.parent == out.parent  # written beside, same filesystem
        assert (tmp_path / "new" / ".result.lock").is_file()
    assert results.target == out.resolve() and not results.folder.exists()
    manifest = assert_manifest_matches(out)
    assert manifest["generator"] == "liverloc run" and manifest["options"] == {"seed": 1}
    assert manifest["version"] == outputs.__version__ and manifest["started"] <= manifest["finished"]
    assert manifest["inputs"]["CT"] == {"path": str(ct), "bytes": 15,
                                        "sha256": hashlib.sha256(b"not really a CT").hexdigest()}
    assert manifest["inputs"]["--series"]["files"] == 1 and set(manifest["inputs"]) == {"CT", "--series"}
    assert sorted(p.name for p in out.parent.iterdir()) == ["result"]  # no lock, no staging folder left


@pytest.mark.parametrize("earlier", [False, True], ids=["new folder", "earlier results with --overwrite"])
def test_a_failure_mid_write_leaves_out_as_it_was_and_no_staging_folder(tmp_path, earlier):
    out = tmp_path / "result"
    if earlier:
        fake_run(out, ["report.json", "couinaud.nii.gz"])
    before = snapshot(tmp_path)
    with pytest.raises(RuntimeError, match="writer failed"):
        with outputs.atomic_results(out, "liverloc run", {}, {}, overwrite=True) as results:
            write_set(results.folder, ["denoised.nii.gz", "report.json"])
            raise RuntimeError("writer failed")
    assert snapshot(tmp_path) == before  # the earlier set intact, or no --out at all
    assert sorted(p.name for p in tmp_path.iterdir()) == (["result"] if earlier else [])


def test_created_parent_folders_are_removed_again_on_failure(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with outputs.atomic_results(tmp_path / "a" / "b" / "result", "liverloc run", {}, {}):
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_sigterm_mid_write_cleans_up_like_ctrl_c_and_restores_the_handler(tmp_path):
    out = tmp_path / "result"
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        with outputs.atomic_results(out, "liverloc run", {}, {}) as results:
            write_set(results.folder, ["report.json"])
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # the handler runs between bytecodes
                pass
            pytest.fail("SIGTERM did not interrupt the write")
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) is previous


@pytest.mark.parametrize("fault", ["disk full", "empty file"])
def test_a_write_error_is_one_output_error_and_writes_nothing(tmp_path, fault):
    out = tmp_path / "result"
    with pytest.raises(outputs.OutputError, match=r"nothing was written to --out .*result, which is as it was") as info:
        with outputs.atomic_results(out, "liverloc run", {}, {}) as results:
            write_set(results.folder, ["report.json"])
            if fault == "disk full":
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(results.folder / "tissue.nii.gz"))
            (results.folder / "tissue.nii.gz").write_bytes(b"")  # what ITK leaves on a full disk, without an error
    assert ("No space left on device" if fault == "disk full" else "tissue.nii.gz") in str(info.value)
    assert isinstance(info.value, InputError) and list(tmp_path.iterdir()) == []


def test_earlier_results_are_refused_without_overwrite_and_left_unchanged(tmp_path):
    out = tmp_path / "result"
    fake_run(out, ["report.json", "couinaud.nii.gz"])
    before = snapshot(tmp_path)
    with pytest.raises(outputs.OutputError, match=r"already holds the results of an earlier liverloc run .*--overwrite"):
        fake_run(out, ["report.json"])
    assert snapshot(tmp_path) == before


def test_overwrite_replaces_earlier_results_as_a_whole(tmp_path):
    out = tmp_path / "result"
    fake_run(out, ["report.json", "couinaud.nii.gz", "gradcam.nii.gz", "overview.png", "figures/a.png"])
    fake_run(out, ["report.json", "tissue.nii.gz"], overwrite=True)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == ["report.json", "run.json", "tissue.nii.gz"]
    assert assert_manifest_matches(out)["files"].keys() == {"report.json", "tissue.nii.gz"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result"]


def test_an_existing_empty_folder_takes_the_results(tmp_path):
    out = tmp_path / "result"
    out.mkdir()
    fake_run(out, ["report.json"])
    assert_manifest_matches(out)


FOREIGN = {
    "a plain folder": lambda out: write_set(out, ["notes.txt", "scan.nii.gz", "a/b.txt", "c", "d", "e"]),
    "earlier results and a file added since": lambda out: (fake_run(out, ["report.json"]),
                                                           write_set(out, ["notes.txt"])),
    "another tool's run.json": lambda out: (out.mkdir(), (out / "run.json").write_text('{"generator": "other"}', encoding="utf-8")),
}


@pytest.mark.parametrize("case", sorted(FOREIGN))
@pytest.mark.parametrize("overwrite", [False, True])
def test_a_folder_with_files_liverloc_did_not_write_is_never_replaced(tmp_path, case, overwrite):
    out = tmp_path / "result"
    out.mkdir() if case == "a plain folder" else None
    FOREIGN[case](out)
    before = snapshot(tmp_path)
    with pytest.raises(outputs.OutputError, match="holds files that liverloc did not write .* never replaced") as info:
        fake_run(out, ["report.json"], overwrite=overwrite)
    message = str(info.value)
    assert ("notes.txt" in message) if "run.json" not in case else ("run.json" in message)
    if case == "a plain folder":
        names = message.split("did not write (")[1].split(");")[0].split(", ")
        assert len(names) == outputs.SHOWN + 1 and names[-1] == "..."  # a few names, not the whole folder
    assert snapshot(tmp_path) == before


def test_a_held_lock_refuses_a_second_command_naming_the_lock(tmp_path):
    out = tmp_path / "result"
    with outputs.atomic_results(out, "liverloc run", {}, {}) as first:
        write_set(first.folder, ["report.json"])
        with pytest.raises(outputs.OutputError, match="is in use by another liverloc command") as info:
            fake_run(out, ["other.json"], overwrite=True)
        lock = tmp_path / ".result.lock"
        assert f"lock {lock}: process {os.getpid()} on " in str(info.value)
        assert f"delete {lock} and run again" in str(info.value)
        assert first.folder.is_dir() and lock.is_file()  # the second command did not touch the first's files
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "run.json"]


HOLD_LOCK = """
import sys, time
from pathlib import Path
from LiverLocalizationLib import outputs
with outputs.folder_lock(Path(sys.argv[1]), Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(600)
"""


def lock_holder(tmp_path: Path):
    """A separate process holding the lock of tmp_path/result (as a running command does) until it is killed."""
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(outputs.__file__).resolve().parents[1]),
                                                         os.environ.get("PYTHONPATH", "")])}
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path / "result")], env=env,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


@pytest.mark.skipif(os.name == "nt", reason="no flock on Windows: a left lock there is deleted by hand")
def test_a_lock_left_by_a_killed_command_on_this_host_is_taken_over_leaving_nothing(tmp_path):
    """A command killed by SIGKILL leaves its lock file; its lock is released with the process, so the next command
    takes the file over in place (its own pid in it) and, once done, nothing is left beside --out: no lock, no file
    set aside. The same for a lock file left empty (killed between creating and writing it) and for an earlier
    version's lock naming a dead process. A living holder's lock, or another host's, still refuses."""
    import socket

    lock = tmp_path / ".result.lock"
    holder = lock_holder(tmp_path)
    held_by = json.loads(lock.read_text(encoding="utf-8"))
    assert held_by["pid"] == holder.pid and not outputs.lock_is_stale(lock)
    with pytest.raises(outputs.OutputError, match=f"in use by another liverloc command .*process {holder.pid} on"):
        fake_run(tmp_path / "result", ["report.json"])
    assert json.loads(lock.read_text(encoding="utf-8")) == held_by  # the holder's lock untouched
    holder.kill()
    holder.wait()
    assert lock.is_file() and outputs.lock_is_stale(lock)  # left behind by the killed command
    fake_run(tmp_path / "result", ["report.json"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result"]

    for left in ("", json.dumps({"pid": holder.pid, "host": socket.gethostname(), "started": "2026-01-01"})):
        lock.write_text(left, encoding="utf-8")
        assert outputs.lock_is_stale(lock)
        with outputs.folder_lock(tmp_path / "result", tmp_path / "result") as taken:
            assert json.loads(taken.read_text(encoding="utf-8"))["pid"] == os.getpid()
            assert sorted(p.name for p in tmp_path.iterdir()) == [".result.lock", "result"]
        assert sorted(p.name for p in tmp_path.iterdir()) == ["result"]

    lock.write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": "2026-01-01"}), encoding="utf-8")
    assert not outputs.lock_is_stale(lock)
    with pytest.raises(outputs.OutputError, match="in use by another liverloc command"):
        fake_run(tmp_path / "result", ["report.json"], overwrite=True)
    assert json.loads(lock.read_text(encoding="utf-8"))["host"] == "elsewhere"


def test_two_commands_racing_for_a_stale_lock_one_wins(tmp_path):
    """Several processes started at once on a folder whose lock a killed command left: exactly one takes it (the
    others are refused naming it), and nothing is left once they end."""
    import subprocess
    import sys

    holder = lock_holder(tmp_path)
    holder.kill()
    holder.wait()
    script = """
import sys
from pathlib import Path
from LiverLocalizationLib import outputs
print("ready", flush=True)
sys.stdin.readline()
try:
    with outputs.folder_lock(Path(sys.argv[1]), Path(sys.argv[1])):
        print("took", flush=True)
        sys.stdin.readline()
except outputs.OutputError:
    print("refused", flush=True)
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(outputs.__file__).resolve().parents[1]),
                                                         os.environ.get("PYTHONPATH", "")])}
    racers = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "result")], env=env, text=True,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE) for _ in range(4)]
    assert [racer.stdout.readline().strip() for racer in racers] == ["ready"] * 4
    for racer in racers:  # all at once, on a lock file left by a killed command
        racer.stdin.write("go\n")
        racer.stdin.flush()
    results = sorted(racer.stdout.readline().strip() for racer in racers)
    for racer in racers:
        racer.stdin.close()
        racer.wait(timeout=60)
    assert results == ["refused", "refused", "refused", "took"]
    assert list(tmp_path.iterdir()) == []


def test_staging_folders_a_killed_command_left_are_removed_under_the_lock(tmp_path):
    stale = [tmp_path / ".result.partial-99999-abcdef", tmp_path / ".result.replaced-99999-abcdef"]
    for folder in stale:
        write_set(folder, ["report.json"])
    keep = tmp_path / ".other.partial-1-000000"  # another folder's
    keep.mkdir()
    fake_run(tmp_path / "result", ["report.json"])
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.partial-1-000000", "result"]


# ----------------------------------------------------------------------------- liverloc run

@pytest.fixture(scope="module")
def replayed(tmp_path_factory):
    """A small phantom on disk and the pipeline's result on it (with Couinaud segments and Grad-CAM), computed once;
    the CLI tests replay it so that only the writing is repeated."""
    from LiverLocalizationLib.phantom import generate_phantom, write_phantom

    case = tmp_path_factory.mktemp("case")
    ph = generate_phantom(seed=13, size="small", n_lesions=1)
    write_phantom(ph, case)
    result = pipeline.run_pipeline(ph.ct, ph.landmarks)
    assert result.couinaud is not None and result.gradcam is not None
    return case, result


@pytest.fixture
def run_argv(replayed, monkeypatch):
    """`liverloc run` arguments on the phantom with a given --out; run_pipeline returns the stored result."""
    case, result = replayed
    monkeypatch.setattr(pipeline, "run_pipeline", lambda *args, **kwargs: result)

    def argv(out: Path, *more: str) -> list[str]:
        return ["-q", "run", str(case / "ct.nii.gz"), "--landmarks", str(case / "landmarks.mrk.json"), *more,
                "--out", str(out)]

    return argv


def test_cli_rerun_without_overwrite_is_refused_and_the_files_are_unchanged(tmp_path, run_argv, capsys):
    out = tmp_path / "result"
    assert run_cli(run_argv(out, "--no-figures"), capsys)[0] == 0
    before = snapshot(tmp_path)
    code, err = run_cli(run_argv(out, "--no-figures"), capsys)
    assert code == 2
    assert_one_clear_line(err, f"--out {out} already holds the results of an earlier liverloc run", "--overwrite")
    assert snapshot(tmp_path) == before


def test_cli_overwrite_leaves_no_stale_file_and_run_json_lists_exactly_the_files(tmp_path, replayed, run_argv,
                                                                                  monkeypatch, capsys):
    case, result = replayed
    out = tmp_path / "result"
    assert run_cli(run_argv(out), capsys)[0] == 0
    first = {p.name for p in out.iterdir()}
    assert {"couinaud.nii.gz", "couinaud.png", "gradcam.nii.gz", "gradcam.png", "overview.png", "run.json"} <= first
    bare = dataclasses.replace(result, couinaud=None, gradcam=None)  # as without landmarks and classification
    monkeypatch.setattr(pipeline, "run_pipeline", lambda *args, **kwargs: bare)
    code, _ = run_cli(run_argv(out, "--no-figures", "--no-classify", "--overwrite"), capsys)
    assert code == 0
    left = {p.name for p in out.iterdir()}
    assert not {n for n in left if n.startswith(("couinaud.", "gradcam.", "overview."))}, left
    manifest = assert_manifest_matches(out)
    ct = case / "ct.nii.gz"
    assert manifest["inputs"]["CT"]["sha256"] == hashlib.sha256(ct.read_bytes()).hexdigest()
    assert "--weights" not in manifest["inputs"]  # --no-classify reads no weights
    assert manifest["options"]["overwrite"] is True and manifest["options"]["no_figures"] is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result"]


@pytest.mark.parametrize("earlier", [False, True], ids=["new folder", "earlier results with --overwrite"])
def test_cli_failure_mid_write_leaves_no_partial_results_and_no_temporary_folder(tmp_path, run_argv, monkeypatch,
                                                                                capsys, earlier):
    out = tmp_path / "result"
    if earlier:
        assert run_cli(run_argv(out, "--no-figures"), capsys)[0] == 0
    before = snapshot(tmp_path)
    written = []
    real = pipeline.write_report_csv

    def full_disk(lesions, path):  # report.csv comes after every image and report.json
        written.extend(p.name for p in Path(path).parent.iterdir())
        real(lesions, path)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(pipeline, "write_report_csv", full_disk)
    code, err = run_cli(run_argv(out, "--overwrite", "--no-figures"), capsys)
    assert code == 2
    assert_one_clear_line(err, "No space left on device", f"nothing was written to --out {out}")
    assert "tissue.nii.gz" in written and "report.json" in written  # the failure came mid-write
    assert snapshot(tmp_path) == before

    def bug(lesions, path):
        raise RuntimeError("a writer's bug")

    monkeypatch.setattr(pipeline, "write_report_csv", bug)
    with pytest.raises(RuntimeError):
        cli.main(run_argv(out, "--overwrite"))
    assert snapshot(tmp_path) == before


def test_cli_held_lock_refuses_a_second_run(tmp_path, run_argv, capsys):
    out = tmp_path / "result"
    lock = tmp_path / ".result.lock"
    lock.write_text(json.dumps({"pid": 4242, "host": "elsewhere", "started": "2025-01-01T00:00:00+00:00"}), encoding="utf-8")
    code, err = run_cli(run_argv(out, "--overwrite"), capsys)
    assert code == 2
    assert_one_clear_line(err, f"lock {lock}: process 4242 on elsewhere", f"delete {lock}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".result.lock"] and lock.read_text(encoding="utf-8").startswith('{"pid": 4242')


def test_cli_never_deletes_a_folder_of_foreign_files(tmp_path, run_argv, capsys):
    out = tmp_path / "mine"
    write_set(out, ["notes.txt", "report.json"])
    before = snapshot(tmp_path)
    code, err = run_cli(run_argv(out, "--overwrite"), capsys)
    assert code == 2
    assert_one_clear_line(err, "did not write (notes.txt, report.json)", "never replaced, even with --overwrite")
    assert snapshot(tmp_path) == before


def test_run_help_says_what_out_overwrite_and_run_json_do(capsys):
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for words in ("moved into place only when complete", "run.json", "SHA-256", "refused unless --overwrite",
                  "never replaced", "lock file", "--overwrite replace the results"):
        assert words in text, words


# ----------------------------------------------------------------------------- liverloc evaluate-classifier

def test_evaluate_classifier_writes_whole_and_refuses_a_rerun_without_overwrite(tmp_path, monkeypatch, capsys):
    from LiverLocalizationLib import classifier_training

    def fake_evaluate(weights, seeds, out_dir, **kwargs):
        write_set(Path(out_dir), ["evaluation.json", "confusion_matrix.png"])
        return {"summary": "fake"}

    monkeypatch.setattr(classifier_training, "evaluate", fake_evaluate)
    monkeypatch.setattr(classifier_training, "evaluation_seeds", lambda weights, cases, first: [1000])
    out = tmp_path / "evaluation"
    assert run_cli(["-q", "evaluate-classifier", "--out", str(out)], capsys)[0] == 0
    manifest = assert_manifest_matches(out)
    assert manifest["generator"] == "liverloc evaluate-classifier" and "--weights" in manifest["inputs"]
    before = snapshot(tmp_path)
    code, err = run_cli(["-q", "evaluate-classifier", "--out", str(out)], capsys)
    assert code == 2
    assert_one_clear_line(err, "earlier liverloc evaluate-classifier", "--overwrite")
    assert snapshot(tmp_path) == before
    assert run_cli(["-q", "evaluate-classifier", "--overwrite", "--out", str(out)], capsys)[0] == 0
    assert_manifest_matches(out)
