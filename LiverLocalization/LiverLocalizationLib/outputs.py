"""Results that appear whole or not at all: a staging folder beside --out, a manifest (run.json), a lock.

A command writes its results into a hidden staging folder next to the --out folder (same filesystem, so the final
move is a rename) and moves the set into place only when every file is written, together with run.json: the inputs
with their SHA-256, the options, the package version, the dates and every file written with its size and SHA-256.
A failed or interrupted command (an exception, Ctrl-C, SIGTERM) removes its staging folder and leaves --out as it
was, so no file in --out looks complete unless the whole set is. A folder holding an earlier command's results is
refused unless --overwrite is given, and is then replaced as a whole; a folder holding any file liverloc did not
write is never replaced. A lock file beside --out stops two commands writing into one folder at once.

Pure standard library (no SimpleITK, Slicer or Qt), so the command line and its tests use it cheaply.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import glob
import hashlib
import itertools
import json
import os
import secrets
import shutil
import signal
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

from . import __version__
from .checksums import file_sha256
from .errors import InputError

MANIFEST = "run.json"
GENERATOR_PREFIX = "liverloc "  # run.json's generator: "liverloc run", "liverloc evaluate-classifier"
SHOWN = 4  # file names quoted in a refusal
STALE_KINDS = ("partial", "replaced")  # hidden siblings a killed command may leave: .NAME.partial-*, .NAME.replaced-*


class OutputError(InputError):
    """An --out folder that cannot take the results now (earlier results, foreign files, in use by another command,
    a failed write); printed as one line with exit status 2 like any bad input."""


@dataclass
class Results:
    """Where a command writes (`folder`, the staging folder) and, once moved into place, what was written."""

    folder: Path
    target: Path
    files: dict[str, dict] = field(default_factory=dict)


def now() -> str:
    """The current UTC time as ISO 8601 to the second, the form run.json records."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def input_record(path: Path) -> dict:
    """What run.json records of an input: its absolute path, size and SHA-256; for a folder (a DICOM series, a
    phantom's truth) its file count, total size and the SHA-256 of its files' sorted names and checksums."""
    path = Path(path)
    if path.is_file():
        return {"path": str(path.absolute()), "bytes": path.stat().st_size, "sha256": file_sha256(path)}
    files = sorted(p for p in path.rglob("*") if p.is_file())
    lines = "".join(f"{p.relative_to(path).as_posix()}\t{file_sha256(p)}\n" for p in files)
    return {"path": str(path.absolute()), "files": len(files), "bytes": sum(p.stat().st_size for p in files),
            "sha256": hashlib.sha256(lines.encode()).hexdigest()}


def file_records(folder: Path) -> dict[str, dict]:
    """Every file under `folder` (relative name → size and SHA-256), each flushed to the disk. An empty file is
    an OSError: a full disk lets some writers leave 0-byte files without an error."""
    records = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = path.relative_to(folder).as_posix()
        size = path.stat().st_size
        if size == 0:
            raise OSError(errno.EIO, "a result file was written empty (is the disk full?)", name)
        records[name] = {"bytes": size, "sha256": file_sha256(path, sync=True)}
    return records


def read_manifest(folder: Path) -> dict | None:
    """The run.json in `folder` when a liverloc command wrote it (None otherwise: absent, unreadable or foreign)."""
    try:
        doc = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ok = isinstance(doc, dict) and str(doc.get("generator", "")).startswith(GENERATOR_PREFIX)
    return doc if ok and isinstance(doc.get("files"), dict) else None


def foreign_files(folder: Path, manifest: dict | None) -> Iterator[str]:
    """Names under `folder` that the manifest does not list as written by liverloc (all of them without one),
    found lazily so that a large folder given by mistake is not walked to its end."""
    listed = set(manifest["files"]) | {MANIFEST} if manifest else set()
    for root, dirs, names in os.walk(folder):
        here = Path(root).relative_to(folder)
        for name in sorted(dirs):
            if (Path(root) / name).is_symlink():
                yield (here / name).as_posix()
        for name in sorted(names):
            rel = (here / name).as_posix()
            if rel not in listed:
                yield rel


def existing_results_problem(out: Path, target: Path, overwrite: bool) -> str | None:
    """Why the results may not go into `target` now (None when they may): it holds files liverloc did not write
    (never replaced, even with --overwrite), or an earlier command's results and --overwrite was not given."""
    if not target.exists():
        return None
    if not target.is_dir():
        return f"--out {out} is a file; name a folder"
    manifest = read_manifest(target)
    found = list(itertools.islice(foreign_files(target, manifest), SHOWN + 1))
    if found:
        names = ", ".join(found[:SHOWN]) + (", ..." if len(found) > SHOWN else "")
        return (f"--out {out} holds files that liverloc did not write ({names}); they are never replaced, even with "
                "--overwrite. Choose another --out folder, or move those files away")
    if manifest and not overwrite:
        return (f"--out {out} already holds the results of an earlier {manifest['generator']} "
                f"({manifest.get('finished', 'date unknown')}); give --overwrite to replace them as a whole, or "
                "choose another --out folder")
    return None


def sibling(target: Path, kind: str) -> Path:
    """A hidden path beside `target` on the same filesystem: .NAME.lock, or .NAME.KIND-PID-RANDOM for a folder."""
    if kind == "lock":
        return target.parent / f".{target.name}.lock"
    return target.parent / f".{target.name}.{kind}-{os.getpid()}-{secrets.token_hex(3)}"


@contextlib.contextmanager
def folder_lock(out: Path, target: Path) -> Iterator[Path]:
    """Hold the lock file beside `target` while the body runs, so that a second command into the same folder stops
    at once with a message naming the lock, rather than mixing its files with ours.

    Where the system has advisory file locks (POSIX), the lock is the file's `flock`, held through an open file
    descriptor: the kernel releases it when its holder ends in any way (SIGKILL, a crash), so a lock file left by a
    killed command is taken over in place (the same file, rewritten with the new holder) and nothing else is
    created or left behind. A lock file naming another host is never taken over (a command there may hold it on a
    shared disk). Elsewhere (Windows) the lock is the file's exclusive creation, and a left lock must be deleted.
    """
    lock = sibling(target, "lock")
    fd = _acquire_lock(out, lock)
    try:
        yield lock
    finally:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()  # before the descriptor closes, so that no one takes an unlinked file for the lock
        os.close(fd)


def _holder_text() -> bytes:
    return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": now()}).encode("utf-8")


def _acquire_lock(out: Path, lock: Path) -> int:
    """The open descriptor of `lock`, now held by this process and naming it; OutputError when another holds it."""
    if fcntl is None:
        return _acquire_lock_by_creation(out, lock)
    for _attempt in range(20):
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise OutputError(lock_held_message(out, lock)) from None
            return _acquire_lock_by_creation(out, lock)  # a filesystem without flock (some network shares)
        try:
            here, there = os.fstat(fd), os.stat(lock)
            current = (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)
        except FileNotFoundError:
            current = False
        if not current:  # its holder removed it between our open and our flock: open the path again
            os.close(fd)
            continue
        holder = _read_holder(fd)
        if holder and holder.get("host") not in (None, socket.gethostname()):
            os.close(fd)
            raise OutputError(lock_held_message(out, lock))
        os.ftruncate(fd, 0)
        os.pwrite(fd, _holder_text(), 0)
        return fd
    raise OutputError(lock_held_message(out, lock))


def _read_holder(fd: int) -> dict | None:
    """The holder a lock file names (pid, host, started); None when it is empty or not such a record."""
    try:
        holder = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def _acquire_lock_by_creation(out: Path, lock: Path) -> int:
    """The lock as a file created exclusively (where there is no flock): refused while the file exists."""
    try:
        fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise OutputError(lock_held_message(out, lock)) from None
    os.write(fd, _holder_text())
    return fd


def lock_is_stale(lock: Path) -> bool:
    """Whether a lock file exists that no running command holds, so that the next command takes it over: its flock
    is free (its holder ended, even by SIGKILL) and it names this host or no host. Where there is no flock
    (Windows), no lock is stale."""
    if fcntl is None:
        return False
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False
    holder = _read_holder(fd)
    os.close(fd)
    return not holder or holder.get("host") in (None, socket.gethostname())


def lock_held_message(out: Path, lock: Path) -> str:
    """The refusal for a folder in use: who holds the lock (as far as its file says) and how to clear a stale one."""
    try:
        holder = json.loads(lock.read_text(encoding="utf-8"))
        who = f"process {holder['pid']} on {holder['host']} since {holder['started']}"
    except (OSError, ValueError, TypeError, KeyError):
        who = "holder unknown"
    return (f"--out {out} is in use by another liverloc command (lock {lock}: {who}). Wait for it to finish; if no "
            f"such command is running (it was killed on another machine), delete {lock} and run again.")


def remove_stale_siblings(target: Path) -> None:
    """Remove the staging and replaced folders a killed command left beside `target`; safe under the lock, which
    every command into `target` holds while such folders of its own exist."""
    for kind in STALE_KINDS:
        for path in target.parent.glob(f".{glob.escape(target.name)}.{kind}-*"):
            shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def sigterm_raises_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt while the body runs (main thread only), so that a killed command cleans
    up like one stopped with Ctrl-C instead of leaving its staging folder and lock behind."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt("terminated")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def make_parents(target: Path) -> list[Path]:
    """Create the missing parents of `target`; returns those created (deepest first), to remove on failure."""
    missing = [p for p in target.parents if not p.exists()]
    target.parent.mkdir(parents=True, exist_ok=True)
    return missing


def remove_if_empty(folders: list[Path]) -> None:
    """Remove folders this command created, deepest first, where they are still empty."""
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()


def write_manifest(results: Results, command: str, inputs: dict, options: dict, started: str) -> None:
    """Record every file in the staging folder, then write run.json there (the last file, flushed to the disk)."""
    results.files = file_records(results.folder)
    doc = {"generator": command, "version": __version__, "started": started, "finished": now(),
           "inputs": inputs, "options": options, "files": results.files}
    path = results.folder / MANIFEST
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(doc, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())


def move_into_place(staging: Path, target: Path) -> None:
    """Rename the complete staging folder to `target`. An existing `target` (an empty folder, or earlier results
    checked under the lock) is renamed aside first and removed after, so that it is never mixed with the new set
    and is restored when the rename fails."""
    if not target.exists():
        os.rename(staging, target)
        return
    old = sibling(target, "replaced")
    os.rename(target, old)
    try:
        os.rename(staging, target)
    except BaseException:
        os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def parent_problem(out: Path, target: Path) -> str | None:
    """Why no staging folder can be made beside `target` (None when it can): --out is the filesystem's root, or its
    parent (or the nearest existing folder above) is not writable."""
    if target.parent == target:
        return f"--out {out} is the root folder; name a folder below it"
    existing = next(p for p in [target.parent, *target.parent.parents] if p.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        return (f"--out {out}: results are written beside it first, in {existing}, which is not writable; choose an "
                "--out folder whose parent you can write to")
    return None


@contextlib.contextmanager
def atomic_results(out: Path, command: str, inputs: dict[str, Path | None], options: dict,
                   overwrite: bool = False) -> Iterator[Results]:
    """Yield a Results whose `folder` (a staging folder beside --out) the body writes into; when the body ends
    normally, run.json is written and the set replaces `out` as a whole. Any failure, Ctrl-C or SIGTERM removes the
    staging folder and leaves `out` as it was; an OSError becomes a one-line OutputError. Refused before the body
    runs, with OutputError: a folder in use, foreign files, earlier results without `overwrite`."""
    out = Path(out)
    target = out.resolve()
    started = now()
    problem = parent_problem(out, target)
    if problem:
        raise OutputError(problem + ".")
    with sigterm_raises_interrupt():
        created = make_parents(target)
        try:
            with folder_lock(out, target):
                remove_stale_siblings(target)
                problem = existing_results_problem(out, target, overwrite)
                if problem:
                    raise OutputError(problem + ".")
                records = {name: input_record(path) for name, path in inputs.items() if path is not None}
                results = Results(folder=sibling(target, "partial"), target=target)
                results.folder.mkdir()
                try:
                    yield results
                    write_manifest(results, command, records, options, started)
                    move_into_place(results.folder, target)
                except BaseException as exc:
                    shutil.rmtree(results.folder, ignore_errors=True)
                    if isinstance(exc, OSError):
                        raise OutputError(f"{exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}; "
                                          f"nothing was written to --out {out}, which is as it was") from exc
                    raise
        except BaseException:
            remove_if_empty(created)
            raise
