"""The pipeline in a separate process, so that Slicer's GUI stays responsive and Cancel stops it at once.

The Slicer module reads its input nodes into images (`mrml.read_run_inputs`), writes them into a job folder
(`write_job`) and starts a worker process on it (`BackgroundRun.start`: ``python -m LiverLocalizationLib.background
JOB``, with Slicer's ``PythonSlicer`` as the interpreter). The worker never touches the scene: it reads the job,
runs `pipeline.run_pipeline`, appends each progress report to ``progress.txt`` and writes the result's images
(``.nrrd``) and its other fields (``result.json``) into the folder; an error goes to ``error.json``. The GUI polls
the run with a timer (`BackgroundRun.poll`), cancels it by ending the process (`BackgroundRun.cancel`: within
about a second, at any point of a stage), and reads the finished result back (`BackgroundRun.result`), which
`mrml.write_run_outputs` puts into nodes. Nothing here imports ``slicer``, ``vtk`` or ``qt``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from . import io, pipeline
from .errors import InputError

PROGRESS_FILE = "progress.txt"
RESULT_FILE = "result.json"
ERROR_FILE = "error.json"
LOG_FILE = "worker.log"
INPUT_CT = "ct.nrrd"
INPUT_LIVER = "liver_mask.nrrd"
INPUT_JOB = "job.json"
RESULT_IMAGES = ("denoised", "liver_mask", "tissue", "lesion_labels", "vessel_mask", "couinaud", "gradcam")


def _points_json(points: dict[str, np.ndarray] | None) -> dict[str, list[float]] | None:
    return None if points is None else {str(k): [float(c) for c in v] for k, v in points.items()}


def _points_from_json(points: dict | None) -> dict[str, np.ndarray] | None:
    return None if points is None else {k: np.asarray(v, dtype=float) for k, v in points.items()}


def _options_json(options: pipeline.PipelineOptions) -> dict:
    fields = dataclasses.asdict(dataclasses.replace(options, lesion_points=None))
    fields["lesion_points"] = _points_json(options.lesion_points)
    return fields


def _options_from_json(fields: dict) -> pipeline.PipelineOptions:
    return pipeline.PipelineOptions(**{**fields, "lesion_points": _points_from_json(fields["lesion_points"])})


def write_job(job_dir: str | os.PathLike, ct: sitk.Image, landmarks: dict[str, np.ndarray] | None,
              liver_mask: sitk.Image | None, options: pipeline.PipelineOptions) -> Path:
    """Write one run's inputs into `job_dir` (created; it must be empty): the CT and the liver mask as uncompressed
    NRRD (geometry exact), landmarks (LPS mm), lesion points and options as JSON. Returns the folder."""
    job = Path(job_dir)
    job.mkdir(parents=True, exist_ok=True)
    if any(job.iterdir()):
        raise InputError(f"The job folder {job} is not empty; give a new folder for each run.")
    io.write_image(ct, job / INPUT_CT, compress=False)
    if liver_mask is not None:
        io.write_image(liver_mask, job / INPUT_LIVER, compress=False)
    spec = {"landmarks": _points_json(landmarks), "options": _options_json(options), "liver_mask": liver_mask is not None}
    (job / INPUT_JOB).write_text(json.dumps(spec, indent=1), encoding="utf-8")
    return job


def read_job(job_dir: str | os.PathLike) -> tuple[sitk.Image, dict | None, sitk.Image | None, pipeline.PipelineOptions]:
    """(CT, landmarks, liver mask or None, options) of a job written by `write_job`."""
    job = Path(job_dir)
    spec = json.loads((job / INPUT_JOB).read_text(encoding="utf-8"))
    options = _options_from_json(spec["options"])
    liver = sitk.ReadImage(str(job / INPUT_LIVER)) if spec["liver_mask"] else None
    return sitk.ReadImage(str(job / INPUT_CT)), _points_from_json(spec["landmarks"]), liver, options


def _report_progress(job: Path):
    path = job / PROGRESS_FILE

    def report(fraction: float, message: str) -> None:
        with path.open("a", encoding="utf-8") as f:
            f.write(f"{float(fraction):.4f}\t{' '.join(str(message).split())}\n")

    return report


def write_result(result: pipeline.PipelineResult, job_dir: str | os.PathLike) -> None:
    """Write a result's images (all but the CT, which the caller has) and its other fields; result.json last, so
    that its presence says the result is complete."""
    job = Path(job_dir)
    for name in RESULT_IMAGES:
        image = getattr(result, name)
        if image is not None:
            io.write_image(image, job / f"{name}.nrrd", compress=False)
    fields = {f.name: getattr(result, f.name) for f in dataclasses.fields(result) if f.name not in RESULT_IMAGES + ("ct",)}
    fields["options"] = _options_json(result.options)
    fields["landmarks"] = _points_json(result.landmarks)
    partial = job / (RESULT_FILE + ".part")
    partial.write_text(json.dumps(pipeline.jsonable(fields, digits=None)), encoding="utf-8")
    os.replace(partial, job / RESULT_FILE)


def read_result(job_dir: str | os.PathLike, ct: sitk.Image) -> pipeline.PipelineResult:
    """The `pipeline.PipelineResult` a worker wrote into `job_dir`, with `ct` (the run's input) as its CT."""
    job = Path(job_dir)
    fields = json.loads((job / RESULT_FILE).read_text(encoding="utf-8"))
    fields["options"] = _options_from_json(fields["options"])
    fields["landmarks"] = _points_from_json(fields["landmarks"])
    images = {name: sitk.ReadImage(str(job / f"{name}.nrrd")) if (job / f"{name}.nrrd").exists() else None
              for name in RESULT_IMAGES}
    return pipeline.PipelineResult(ct=ct, **images, **fields)


def run_job(job_dir: str | os.PathLike) -> int:
    """The worker: run the job in `job_dir` and write its result, or its error (error.json: kind, message).
    Returns the exit status (0 done, 2 bad input or a missing package, 1 any other error)."""
    job = Path(job_dir)
    try:
        ct, landmarks, liver, options = read_job(job)
        report = _report_progress(job)
        result = pipeline.run_pipeline(ct, landmarks, liver_mask=liver, options=options,
                                       progress=lambda fraction, message: report(0.97 * fraction, message))
        write_result(result, job)
        report(1.0, "results written")
        return 0
    except InputError as error:  # MissingPackage included
        kind, message, status = type(error).__name__, str(error), 2
    except Exception as error:  # noqa: BLE001 - the worker reports every failure to the GUI instead of dying silently
        kind, message, status = "Error", f"{type(error).__name__}: {error}", 1
        sys.stderr.write(traceback.format_exc())
    (job / ERROR_FILE).write_text(json.dumps({"kind": kind, "message": message}), encoding="utf-8")
    return status


class BackgroundRun:
    """One pipeline run in a worker process on a job folder (`write_job`); poll it from a GUI timer."""

    def __init__(self, job_dir: str | os.PathLike, process: subprocess.Popen):
        self.job_dir = Path(job_dir)
        self.process = process
        self._offset = 0
        self.cancelled = False

    @classmethod
    def start(cls, job_dir: str | os.PathLike, python: str | None = None) -> BackgroundRun:
        """Start the worker on `job_dir` with the interpreter `python` (None: this one; in Slicer, PythonSlicer).
        Its output goes to worker.log in the job folder."""
        job = Path(job_dir)
        library_parent = str(Path(__file__).resolve().parents[1])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (library_parent, env.get("PYTHONPATH", "")) if p)
        with (job / LOG_FILE).open("wb") as log:
            process = subprocess.Popen([python or sys.executable, "-m", "LiverLocalizationLib.background", str(job)],
                                       stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                       cwd=str(job))
        return cls(job, process)

    def running(self) -> bool:
        return self.process.poll() is None

    def poll(self) -> list[tuple[float, str]]:
        """Progress reports (fraction 0..1, message) written since the last call."""
        path = self.job_dir / PROGRESS_FILE
        if not path.exists():
            return []
        with path.open("rb") as f:
            f.seek(self._offset)
            data = f.read()
        complete = data[:data.rfind(b"\n") + 1]  # a line still being written waits for the next call
        self._offset += len(complete)
        reports = []
        for line in complete.decode("utf-8", errors="replace").splitlines():
            fraction, _, message = line.partition("\t")
            reports.append((float(fraction), message))
        return reports

    def cancel(self, grace_s: float = 1.0) -> float:
        """End the worker: terminate, and kill it if it has not ended after `grace_s`. Returns the seconds taken."""
        start = time.perf_counter()
        self.cancelled = True
        if self.running():
            self.process.terminate()
            try:
                self.process.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return time.perf_counter() - start

    def wait(self, timeout_s: float | None = None) -> int:
        return self.process.wait(timeout_s)

    def result(self, ct: sitk.Image) -> pipeline.PipelineResult:
        """The finished run's result (`ct`: the run's input CT). Raises pipeline.Cancelled after `cancel`,
        InputError with the worker's message for bad input or a missing package, RuntimeError for any other
        failure (with the end of worker.log), and RuntimeError while the worker still runs."""
        if self.running():
            raise RuntimeError("The background run has not finished yet.")
        if self.cancelled:
            raise pipeline.Cancelled("Cancelled by the user; no results were written.")
        error = self.job_dir / ERROR_FILE
        if error.exists():
            info = json.loads(error.read_text(encoding="utf-8"))
            if info["kind"] != "Error":
                raise InputError(info["message"])
            raise RuntimeError(f"The background run failed: {info['message']}\n{self._log_tail()}")
        if not (self.job_dir / RESULT_FILE).exists():
            raise RuntimeError(f"The background run ended (exit status {self.process.returncode}) without a result."
                               f"\n{self._log_tail()}")
        return read_result(self.job_dir, ct)

    def _log_tail(self, lines: int = 15) -> str:
        path = self.job_dir / LOG_FILE
        if not path.exists():
            return ""
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m LiverLocalizationLib.background JOB_FOLDER")
    sys.exit(run_job(sys.argv[1]))
