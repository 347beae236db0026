"""`liverloc batch`: a cohort of CTs listed in a CSV, each run as `liverloc run` on a Dask cluster, nothing lost.

Each case runs `cli.run_command` (the very code of `liverloc run`) into OUT/<case>/, written whole with its run.json
(outputs.atomic_results), in a Dask worker process: a `LocalCluster` of --workers processes with one thread each
under --memory-limit, or the workers of an existing cluster given its scheduler address. A failed case is recorded
with a one-line error and never stops the others; a case whose worker dies (Dask's nanny stops a worker above 95 %
of its memory limit) is tried once more on the LocalCluster, then recorded with the limit it passed (killed_line). A second run skips the cases whose run.json exists with the same
input checksums and options, and redoes the others (failed, interrupted or changed). At the end OUT/cases.csv (one
row per case) and OUT/lesions.csv (one row per lesion) are written from each case's report.json.

Dask is imported inside the functions only (the optional extra `batch`), so that the rest of the command line
does not need it.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from . import io, outputs
from .errors import InputError

COLUMNS = ("case", "ct", "landmarks", "liver_mask")  # case and ct required
REQUIRED = ("case", "ct")
CASE_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
RESERVED = {"cases.csv", "lesions.csv"}
LESION_COLUMNS = ("case", "lesion", "volume_ml", "max_diameter_mm", "axial_diameter_mm", "equivalent_diameter_mm",
                  "main_segment", "segments", "kind", "malignant_probability")
# The LocalCluster's Dask settings. A case that dies with its worker (above the memory limit, killed) is tried once
# more, on a fresh worker, then recorded as failed: Dask's default of 4 tries would redo a case that
# outgrows the limit three times over. A worker holds one case at a time (saturation 1), so that a worker's death
# touches only the case it runs. A worker is never paused for memory: it holds no data that spilling could free,
# and a worker left above the pause threshold by a finished case would never take another (the batch would wait
# for ever); above the terminate threshold (95 %) the nanny restarts it instead.
LOCAL_CLUSTER_CONFIG = {"distributed.scheduler.allowed-failures": 1, "distributed.scheduler.worker-saturation": 1.0,
                        "distributed.worker.memory.target": False, "distributed.worker.memory.spill": False,
                        "distributed.worker.memory.pause": False}
PATH_OPTIONS = {"ct", "landmarks", "liver_mask", "lesion_seeds", "weights", "truth", "out"}  # checked by checksum
ERROR_CHARS = 400


@dataclass(frozen=True)
class Case:
    """One row of cases.csv, its paths absolute (relative ones taken from the CSV's folder)."""

    case: str
    ct: Path
    landmarks: Path | None = None
    liver_mask: Path | None = None


def read_cases(path: Path, out: Path) -> list[Case]:
    """The cases of a cases.csv, checked before any work: the columns (known, each once), each row's cells, each id
    (unique even ignoring letter case, usable as a folder name), each file (present, not inside the --out folder).
    Every problem found is one line naming its row, all of them in one InputError."""
    from .cli import input_in_out_problem

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file. Give the CSV of cases (columns {', '.join(COLUMNS)}).")
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            # each row with its line in the file (blank lines counted), for the messages
            rows = [(reader.line_num, row) for row in reader]
            header = [(name or "").strip() for name in (reader.fieldnames or [])]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path}: not a readable CSV ({exc}).") from None
    missing = [name for name in REQUIRED if name not in header]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)}; the header must name {', '.join(REQUIRED)} "
                         f"(and optionally landmarks, liver_mask); found {', '.join(header) or 'no header'}.")
    unknown = [name for name in header if name not in COLUMNS]
    twice = sorted({name for name in header if header.count(name) > 1})
    if unknown or twice:  # a misspelt `landmark` column would otherwise run every case without its landmarks
        what = [f"unknown column(s) {', '.join(repr(n) for n in unknown)}"] if unknown else []
        what += [f"column(s) named twice: {', '.join(twice)}"] if twice else []
        raise InputError(f"{path}: {'; '.join(what)}; the header names case, ct and optionally landmarks, "
                         "liver_mask, each once. Correct the header.")
    if not rows:
        raise InputError(f"{path}: no cases (only a header).")
    problems: list[str] = []
    cases: list[Case] = []
    seen: dict[str, tuple[str, int]] = {}
    base = path.resolve().parent
    for number, raw in rows:
        row = {(k or "").strip(): (v or "").strip() for k, v in raw.items() if k is not None}
        case_id = row.get("case", "")
        where = f"row {number} (case {case_id!r})" if case_id else f"row {number}"
        extra = [v for v in (raw.get(None) or []) if (v or "").strip()]
        if extra:
            problems.append(f"{where}: {len(header) + len(raw[None])} cells where the header names {len(header)} "
                            f"({', '.join(repr(v) for v in extra[:3])} beyond them); a comma inside a path needs the "
                            "cell in double quotes")
        if not CASE_ID.fullmatch(case_id) or case_id.lower() in RESERVED:
            problems.append(f"{where}: the case id must be letters, digits, '.', '_' or '-' (a folder name under "
                            "--out), not starting with '.' or '-', and not cases.csv or lesions.csv")
        elif case_id.lower() in seen:  # 'One' and 'one' would share a folder on macOS and Windows
            earlier, row_number = seen[case_id.lower()]
            same = "" if earlier == case_id else f" as {earlier!r} (ids must differ in more than letter case)"
            problems.append(f"{where}: case id {case_id!r} already used on row {row_number}{same}")
        else:
            seen[case_id.lower()] = (case_id, number)
        paths: dict[str, Path | None] = {}
        for column in COLUMNS[1:]:
            text = row.get(column, "")
            if not text:
                if column == "ct":
                    problems.append(f"{where}: no ct given")
                paths[column] = None
                continue
            file = Path(text).expanduser()
            file = file if file.is_absolute() else base / file
            paths[column] = file
            if not file.exists():
                problems.append(f"{where}: {column} {text}: no such file or folder ({file})")
        inside = input_in_out_problem(Path(out), paths)  # anywhere in --out: a case's folder or the tables could replace it
        if inside:
            problems.append(f"{where}: {inside}")
        if paths.get("ct") is not None:
            cases.append(Case(case_id, paths["ct"], paths["landmarks"], paths["liver_mask"]))
    if problems:
        raise InputError(f"{path}: {len(problems)} problem(s), nothing was run:\n  " + "\n  ".join(problems))
    return cases


def case_args(case: Case, out: Path, classify: bool = True, figures: bool = True):
    """The `liverloc run` options of one case (parsed by the run command's own parser, so every default is
    `liverloc run`'s), results into out/<case>, replacing earlier results of that case as a whole."""
    from .cli import build_parser

    argv = ["-q", "run", str(case.ct), "--out", str(Path(out).absolute() / case.case), "--overwrite"]
    if case.landmarks:
        argv += ["--landmarks", str(case.landmarks)]
    if case.liver_mask:
        argv += ["--liver-mask", str(case.liver_mask)]
    if not classify:
        argv.append("--no-classify")
    if not figures:
        argv.append("--no-figures")
    return build_parser().parse_args(argv)


def one_line(exc: BaseException) -> str:
    """A failure as one line: an InputError's message, otherwise the exception's type and message."""
    text = str(exc) if isinstance(exc, InputError) else f"{type(exc).__name__}: {exc}"
    text = " ".join(text.split()) or type(exc).__name__
    return text if len(text) <= ERROR_CHARS else text[:ERROR_CHARS - 3] + "..."


def worker_address() -> str:
    """The address of the Dask worker running the calling task ("" outside one), recorded in cases.csv so that a
    case that failed on a cluster can be traced to its machine."""
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):
        return ""


def run_case(case: Case, out: str, classify: bool = True, figures: bool = True) -> dict:
    """Run one case as `liverloc run` would (in a Dask worker); never raises for the case's own failure: returns
    {case, status ok/failed, error, seconds, worker}."""
    from .cli import run_command

    start = time.perf_counter()
    try:
        run_command(case_args(case, Path(out), classify, figures))
        status, error = "ok", ""
    except Exception as exc:  # recorded, never stops the other cases
        status, error = "failed", one_line(exc)
    return {"case": case.case, "status": status, "error": error, "seconds": round(time.perf_counter() - start, 2),
            "worker": worker_address()}


def up_to_date(case: Case, out: Path, classify: bool = True, figures: bool = True) -> bool:
    """Whether out/<case> holds complete results of this case: run.json (written last) from `liverloc run`, every
    file it lists present with its size, the same input checksums and the same options."""
    from .cli import options_record, run_inputs

    args = case_args(case, out, classify, figures)
    manifest = outputs.read_manifest(args.out)
    if manifest is None or manifest.get("generator") != "liverloc run":
        return False
    for name, record in manifest["files"].items():
        file = args.out / name
        if not file.is_file() or file.stat().st_size != record.get("bytes"):
            return False
    recorded = {name: (record or {}).get("sha256") for name, record in (manifest.get("inputs") or {}).items()}
    try:
        current = {name: outputs.input_record(path)["sha256"] for name, path in run_inputs(args).items() if path}
    except OSError:
        return False
    if recorded != current:
        return False
    options = json.loads(json.dumps(options_record(args)))
    kept = {key: value for key, value in (manifest.get("options") or {}).items() if key not in PATH_OPTIONS}
    return kept == {key: value for key, value in options.items() if key not in PATH_OPTIONS}


@contextlib.contextmanager
def dask_client(scheduler: str | None, workers: int, memory_limit_gb: float | None) -> Iterator:
    """A dask.distributed Client: on the cluster at `scheduler`, or on a LocalCluster of `workers` processes with
    one thread each, each under `memory_limit_gb` (Dask's 'auto' share of the memory when None)."""
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        raise InputError("liverloc batch needs Dask: pip install 'liverlocalization[batch]' "
                         "(or pip install \"dask[distributed]\").") from None
    if scheduler:
        try:
            client = Client(scheduler, timeout="20s")
        except (OSError, ValueError, TypeError) as exc:
            raise InputError(f"--scheduler {scheduler}: cannot connect ({one_line(exc)}). Check the address "
                             "(e.g. tcp://host:8786) and that the scheduler is running.") from None
        with client:
            yield client
        return
    import dask

    limit = int(memory_limit_gb * 1e9) if memory_limit_gb else "auto"
    with dask.config.set(LOCAL_CLUSTER_CONFIG), LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, memory_limit=limit,
            dashboard_address=None) as cluster, Client(cluster) as client:
        yield client


def killed_line(client, exc: BaseException) -> str:
    """A case whose worker process died on every try (Dask's KilledWorker) as one line: the memory limit it passed
    when Dask's nanny stopped the worker for it (its 'worker-restart-memory' event names that worker), otherwise a
    death from outside (the system's out-of-memory killer, a signal, a crash)."""
    worker = getattr(exc, "last_worker", None)
    tries = getattr(exc, "allowed_failures", 0) + 1
    address, limit = getattr(worker, "address", ""), getattr(worker, "memory_limit", 0) or 0
    try:
        events = [event for _, event in client.get_events("worker-restart-memory")]
    except Exception:  # an old scheduler or a lost connection: the cause is then not known
        events = []
    used = [event.get("rss", 0) for event in events if event.get("worker") == address]
    if used and limit:
        return (f"the worker exceeded its memory limit of {limit / 1e9:.3g} GB ({max(used) / 1e9:.2f} GB in use "
                f"when Dask stopped it; {tries} tries); raise --memory-limit or run fewer workers")
    return (f"the worker process running this case died on each of {tries} tries (killed from outside Dask, e.g. "
            "by the system's out-of-memory killer, or crashed); run fewer workers or see the worker's log")


def _seconds_recorded(folder: Path) -> float | str:
    """How long a case's earlier run took, from its run.json dates (to the second)."""
    manifest = outputs.read_manifest(folder) or {}
    try:
        span = (datetime.datetime.fromisoformat(manifest["finished"])
                - datetime.datetime.fromisoformat(manifest["started"]))
        return span.total_seconds()
    except (KeyError, TypeError, ValueError):
        return ""


def _write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    """Write a CSV whole: into a hidden file beside it, then renamed over it."""
    temporary = path.parent / f".{path.name}.partial-{os.getpid()}"
    with temporary.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(temporary, path)


def _number(value, digits: int = 3):
    return "" if value is None or value == "" else round(float(value), digits)


def write_tables(out: Path, cases: list[Case], outcomes: dict[str, dict]) -> tuple[Path, Path]:
    """OUT/cases.csv (case, status, error, liver_ml, one column per Couinaud segment in ml, n_lesions, seconds, the
    Dask worker that ran it) and
    OUT/lesions.csv (one row per lesion), from each completed case's report.json, in the CSV's order."""
    case_rows, lesion_rows, segments = [], [], []
    for case in cases:
        outcome = dict(outcomes[case.case])
        row = {"case": case.case, "status": outcome["status"], "error": outcome.get("error", ""),
               "seconds": outcome.get("seconds", ""), "worker": outcome.get("worker", "")}
        if outcome["status"] != "failed":
            try:
                report = json.loads((out / case.case / "report.json").read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                row.update(status="failed", error=f"report.json unreadable: {one_line(exc)}")
                case_rows.append(row)
                continue
            row["liver_ml"] = _number(report.get("liver_volume_ml"))
            for name, ml in (report.get("couinaud_volumes_ml") or {}).items():
                if name not in segments:
                    segments.append(name)
                row[f"segment_{name}_ml"] = _number(ml)
            lesions = report.get("lesions") or []
            row["n_lesions"] = len(lesions)
            for lesion in lesions:
                lesion_rows.append({
                    "case": case.case, "lesion": lesion.get("id", ""),
                    **{key: _number(lesion.get(key)) for key in LESION_COLUMNS[2:6]},
                    "main_segment": lesion.get("main_segment") or "",
                    "segments": ";".join(lesion.get("segments") or []),
                    "kind": lesion.get("kind") or "",
                    "malignant_probability": _number(lesion.get("malignant_probability"), 4),
                })
        case_rows.append(row)
    columns = ["case", "status", "error", "liver_ml", *[f"segment_{s}_ml" for s in segments], "n_lesions", "seconds",
               "worker"]
    _write_csv(out / "cases.csv", columns, case_rows)
    _write_csv(out / "lesions.csv", list(LESION_COLUMNS), lesion_rows)
    return out / "cases.csv", out / "lesions.csv"


TABLE_HEADERS = {"cases.csv": "case,status,error,", "lesions.csv": ",".join(LESION_COLUMNS)}


def tables_problem(csv_path: Path, out: Path) -> str | None:
    """Why OUT/cases.csv and OUT/lesions.csv may not be written (None when they may): the CSV of cases lies in
    --out (a cases.csv there would be replaced by the results table), or a file of either name is there that a batch
    did not write (its header is not the batch table's)."""
    target = out.resolve()
    if csv_path.resolve() in {target / name for name in RESERVED} or target in csv_path.resolve().parents:
        return (f"{csv_path} lies in the --out folder {out}, where the results tables (cases.csv, lesions.csv) are "
                "written. Keep the CSV of cases elsewhere, or choose another --out folder.")
    for name, header in TABLE_HEADERS.items():
        table = out / name
        if table.exists():
            try:
                with table.open(encoding="utf-8", errors="replace") as handle:
                    first = handle.readline()
            except OSError:
                first = ""
            if not first.startswith(header):
                return (f"--out {out} holds a {name} that liverloc batch did not write; it is never replaced. "
                        "Choose another --out folder, or move that file away.")
    return None


def run_batch(csv_path: Path, out: Path, scheduler: str | None = None, workers: int = 2,
              memory_limit_gb: float | None = None, classify: bool = True, figures: bool = True,
              progress=None) -> dict[str, dict]:
    """Run every case of the CSV (see the module's description); returns case → {status, error, seconds}, status
    ok, failed or skipped. Raises InputError before any work for a bad CSV or --out, or a cluster it cannot reach."""
    from .cli import out_folder_problem

    out = Path(out)
    problem = io.path_problem(out, "--out") or out_folder_problem(out)
    if problem:
        raise InputError(problem + ".")
    problem = tables_problem(Path(csv_path), out)
    if problem:
        raise InputError(problem)
    cases = read_cases(csv_path, out)
    out.mkdir(parents=True, exist_ok=True)
    report = progress or (lambda fraction, message: None)
    outcomes: dict[str, dict] = {}
    with outputs.folder_lock(out, out.resolve()):  # one batch (or run) into this folder at a time
        todo = []
        for case in cases:
            if up_to_date(case, out, classify, figures):
                outcomes[case.case] = {"case": case.case, "status": "skipped", "error": "",
                                       "seconds": _seconds_recorded(out / case.case)}
                report(len(outcomes) / len(cases), f"{len(outcomes)}/{len(cases)} {case.case} skipped (up to date)")
            else:
                todo.append(case)
        for case in todo:  # under the batch's lock, a case's lock is a killed worker's
            with contextlib.suppress(FileNotFoundError):
                outputs.sibling((out / case.case).resolve(), "lock").unlink()
        if todo:
            with dask_client(scheduler, workers, memory_limit_gb) as client:
                from distributed import KilledWorker, as_completed

                futures = {client.submit(run_case, case, str(out.absolute()), classify, figures, pure=False,
                                         key=f"liverloc-{case.case}-{os.getpid()}-{time.time_ns()}"): case
                           for case in todo}
                for future in as_completed(futures):
                    case = futures[future]
                    try:
                        outcome = future.result()
                    except KilledWorker as exc:  # its worker died on every try: above the memory limit, or killed
                        outcome = {"case": case.case, "status": "failed", "error": killed_line(client, exc),
                                   "seconds": ""}
                        folder = (out / case.case).resolve()  # no worker runs it now: clear what the dead one left
                        outputs.remove_stale_siblings(folder)
                        with contextlib.suppress(FileNotFoundError):
                            outputs.sibling(folder, "lock").unlink()
                    except Exception as exc:  # the task could not run
                        outcome = {"case": case.case, "status": "failed", "error": one_line(exc), "seconds": ""}
                    outcomes[case.case] = outcome
                    seconds = f" in {outcome['seconds']:.1f} s" if outcome["seconds"] != "" else ""
                    detail = f": {outcome['error']}" if outcome["error"] else ""
                    report(len(outcomes) / len(cases),
                           f"{len(outcomes)}/{len(cases)} {case.case} {outcome['status']}{seconds}{detail}")
        write_tables(out, cases, outcomes)
    return {case.case: outcomes[case.case] for case in cases}
