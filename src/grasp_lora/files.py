"""Files: atomic writes (every file appears whole or not at all: temp file in the same folder, then rename),
JSON/JSONL/YAML reading, output folders and their lock."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

import yaml

from .errors import OptionError, UserError

log = logging.getLogger(__name__)

# Every temporary name this tool makes ends so: a lock holder removes only these (a killed writer's), never a
# user's own `.draft.tmp`.
TMP_SUFFIX = ".grasp-lora-tmp"


def file_mode() -> int:
    """The mode open() gives a new file under the current umask (mkstemp's 0600 would hide outputs from a
    teammate or a container running as another user)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `path`; rename it over `path` only if the block succeeds."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    except OSError as e:
        raise UserError(f"{path.parent}: cannot write here ({e.strerror}); choose a writable output directory") from e
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, file_mode())  # after the block: some writers (safetensors) make the file anew, 0600
        os.replace(tmp, path)
    except Exception as e:
        raise_write_error(path, e)
    finally:
        tmp.unlink(missing_ok=True)


def raise_write_error(path: Path, e: Exception) -> None:
    """A full disk or an I/O error while writing `path` is the user's to fix (one line); anything else re-raises.
    torch.save and safetensors report them as their own exception types."""
    if not (isinstance(e, OSError) or any(s in str(e).lower() for s in ("write", "ioerror", "no space", "quota"))):
        raise e
    why = e.strerror if isinstance(e, OSError) and e.strerror else (str(e).strip().splitlines() or [""])[0][:120]
    raise UserError(f"{path}: cannot write it ({why}); free some space or choose another output "
                    f"(the previous {path.name}, if any, is intact)") from None


def write_text(path: str | os.PathLike, text: str) -> None:
    try:
        with atomic_path(path) as tmp:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
    except OSError as e:  # disk full, quota, read-only: the earlier file (if any) is still there
        raise UserError(f"{path}: cannot write it ({e.strerror or e}); free some space or choose another output") from None


def json_safe(obj: Any) -> Any:
    """JSON has no NaN or Infinity: write non-finite floats as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def dumps(obj: Any, **kw) -> str:
    return json.dumps(json_safe(obj), ensure_ascii=False, allow_nan=False, **kw)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, dumps(obj, indent=2) + "\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    write_text(path, "".join(dumps(r) + "\n" for r in rows))


def append_jsonl(path: str | os.PathLike, row: dict) -> None:
    """Append one whole line with a single write() on an O_APPEND descriptor: it lands whole or not at all."""
    line = (dumps(row) + "\n").encode("utf-8")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)  # never out via a link
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
    except OSError as e:
        fix = "remove the link" if Path(path).is_symlink() else "free some space or choose another output"
        raise UserError(f"{path}: cannot append to it ({e.strerror or e}); {fix}") from None


RESUME_FIX = "repair or delete that line, or run again without --resume"


def truncate_jsonl(path: str | os.PathLike, keep) -> int:
    """Rewrite a log keeping the rows for which keep(row) is true (a resumed run drops what it will redo); returns
    how many it kept."""
    if not Path(path).is_file():
        return 0
    rows = [r for r in read_jsonl(path, RESUME_FIX) if keep(r)]
    write_jsonl(path, rows)
    return len(rows)


def identity(path: str | None) -> object:
    """What a path input is, cheaply: each file's size and mtime (a hub id or packaged name: itself)."""
    p = Path(path) if path else None
    if p is None or not p.exists():
        return path
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
    return {"path": str(p.resolve()), "files": [[str(f.relative_to(p)) if f != p else f.name, f.stat().st_size,
                                                 f.stat().st_mtime_ns] for f in files]}


NUMBER = (int, float)
# What each record the tool reads back must hold: file name -> field -> its types (other fields are free).
RECORDS: dict[str, dict[str, tuple[type, ...]]] = {
    "history.jsonl": {"step": (int,), "p": NUMBER, "mu": NUMBER, "sigma": NUMBER},
    "train_log.jsonl": {"step": (int,), "loss": NUMBER},
    "val_log.jsonl": {"step": (int,), "val_loss": NUMBER},
    "ratio.json": {"prune_ratio": NUMBER},
    "done.json": {"seconds": NUMBER},
    "run.json": {"method": (str,), "task": (str,), "lang": (str,)},
    "metrics.json": {"task": (str,), "lang": (str,), "n": (int,)},
    "splits.json": {"lang": (str,), "dataset": (str,)},
    "train_summary.json": {"steps": (int,), "seconds": NUMBER},
}
REWRITE = "rerun the command that wrote it"


def _not_json(constant: str):
    raise ValueError(f"{constant} is not JSON (this tool writes null for it)")


def check_record(obj, path: Path, where: str = "", fix: str = REWRITE) -> dict:
    """`obj` as one record of `path`: a JSON object whose fields (RECORDS, by the file's name) have their types."""
    if not isinstance(obj, dict):
        raise UserError(f"{path}: {where}not a JSON object; {fix}")
    for key, types in RECORDS.get(path.name, {}).items():
        value = obj.get(key)
        if key not in obj or isinstance(value, bool) or not isinstance(value, types) or (
                isinstance(value, float) and not math.isfinite(value)):
            kind = {NUMBER: "a number", (int,): "an integer", (str,): "a string"}[types]
            raise UserError(f"{path}: {where}field '{key}' must be {kind}, not {json.dumps(value)[:40]}; {fix}")
    return obj


def parse_json(text: str, path: Path, where: str = "", fix: str = REWRITE):
    try:
        return json.loads(text, parse_constant=_not_json)
    except ValueError as e:  # JSONDecodeError, NaN, a 5000-digit integer
        at = f"line {e.lineno} column {e.colno}: {e.msg}" if isinstance(e, json.JSONDecodeError) else str(e)[:80]
        raise UserError(f"{path}: {where}not valid JSON ({at}); {fix}") from None
    except RecursionError:
        raise UserError(f"{path}: {where}nested too deeply to read; {fix}") from None


def read_text(path: Path, fix: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text; {fix}") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read it ({e.strerror}); {fix}") from None


def read_json(path: str | os.PathLike, fix: str = REWRITE) -> dict:
    """One JSON record this tool wrote (ratio.json, done.json, run.json, metrics.json, ...), checked; anything
    damaged is a UserError naming the file, the place and `fix`."""
    path = Path(path)
    text = read_text(path, fix)
    if not text.strip():
        raise UserError(f"{path}: empty file; {fix}")
    return check_record(parse_json(text, path, fix=fix), path, fix=fix)


def read_jsonl(path: str | os.PathLike, fix: str = REWRITE) -> list[dict]:
    """A log written by append_jsonl, each line checked. A torn last line (no newline: what a crash leaves) is
    dropped, with a warning; a damaged line anywhere else is a UserError naming the file, the line and `fix`."""
    path = Path(path)
    lines = read_text(path, fix).split("\n")
    if lines[-1]:
        log.warning("%s: its last line is cut short (an interrupted write) and is left out", path)
    rows = []
    for n, line in enumerate(lines[:-1], 1):
        where = f"line {n}: "
        if not line.strip():
            raise UserError(f"{path}: {where}is empty; {fix}")
        rows.append(check_record(parse_json(line, path, where, fix), path, where, fix))
    return rows


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp folder beside `path`; it replaces `path` only if the block succeeds."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent))
    except OSError as e:
        raise UserError(f"{path.parent}: cannot write here ({e.strerror}); choose a writable output directory") from e
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old{TMP_SUFFIX}")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# A training command writes into OUT/RUN_NAME while it runs and moves the finished run into OUT at the end, so OUT
# holds the complete previous result or the complete new one, never a mix (a failed save, a kill, a NaN stop leave
# the previous result untouched and the unfinished run here for --resume). Not TMP_SUFFIX: a lock holder must not
# sweep it away as a killed writer's temp file.
RUN_NAME = ".grasp-lora-run"
# what --resume reads
RESUME_STATE = ("checkpoint.pt", "train_log.jsonl", "val_log.jsonl", "history.jsonl", "best.pt", "config.yaml")


def start_run(out: Path, resume: bool) -> Path:
    """OUT/RUN_NAME, ready for a run: the unfinished run kept when resuming it, else a fresh folder (resuming a
    finished run starts from a copy of OUT's own checkpoint and logs)."""
    work = out / RUN_NAME
    if resume and (work / "checkpoint.pt").is_file():
        return work
    if work.exists():
        if not resume:
            log.warning("%s: an unfinished earlier run is discarded (pass --resume to continue it instead)", out)
        shutil.rmtree(work)
    try:
        work.mkdir()
        if resume and (out / "checkpoint.pt").is_file():
            for name in RESUME_STATE:
                if (out / name).is_file():
                    shutil.copyfile(out / name, work / name)
    except OSError as e:
        raise_write_error(work, e)
    return work


def publish(work: Path, out: Path) -> None:
    """Move a finished run from OUT/RUN_NAME into OUT, replacing the previous run's files of the same names.
    Renames only: they need no space, so a full disk cannot stop it half-way."""
    for entry in sorted(work.iterdir()):
        target = out / entry.name
        if entry.is_dir() and target.is_dir():  # a folder (adapter/) is swapped whole
            old = out / f".{entry.name}.old{TMP_SUFFIX}"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(entry, target)
            shutil.rmtree(old)
        else:
            os.replace(entry, target)
    work.rmdir()


@contextlib.contextmanager
def staged_run(out: Path, resume: bool) -> Iterator[Path]:
    """Yield the folder a run writes into (start_run); publish it into OUT when the block succeeds."""
    work = start_run(out, resume)
    yield work
    publish(work, out)


LOCK_NAME = ".grasp-lora.lock"


def _holder(lock: Path) -> str:
    try:
        h = json.loads(lock.read_text(encoding="utf-8"))
        return f"pid {h['pid']} on {h['host']} ({h['command']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not said who it is yet"


def _held(lock: Path) -> bool:
    """Whether some process holds `lock` (an flock dies with its process: a killed holder leaves none)."""
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def _acquire(lock: Path) -> int:
    """An exclusive flock on `lock`, or a UserError naming its holder. Race-free: the kernel arbitrates, and a
    lock file unlinked by the previous holder between our open and our flock is noticed (inode check) and retried."""
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UserError(f"{lock.parent}: another grasp-lora command is writing here: {_holder(lock)}; wait for "
                            "it or use another output folder") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


@contextlib.contextmanager
def output_lock(folder: str | os.PathLike, command: str) -> Iterator[None]:
    """Hold FOLDER/.grasp-lora.lock while a command writes FOLDER. A second writer of FOLDER, of a folder inside
    it or of one that contains it (a running experiment's stage folders) is refused with the holder's pid, host and
    command. The lock is an flock: a killed holder leaves none, whatever the lock file holds (empty, garbled)."""
    folder = Path(folder)
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{folder}: cannot create it ({e.strerror}); choose a writable output folder") from None
    lock = folder / LOCK_NAME
    try:
        fd = _acquire(lock)
    except OSError as e:
        raise UserError(f"{folder}: cannot write here ({e.strerror}); choose a writable output folder") from None
    try:
        around = [p / LOCK_NAME for p in folder.resolve().parents] + [
            p for p in folder.rglob(LOCK_NAME) if p != lock]
        for other in around:
            if _held(other):
                raise UserError(f"{folder}: {other.parent} is being written by {_holder(other)}; wait for it or "
                                "use a folder outside it")
        for root, dirs, _ in os.walk(folder):  # a linked folder inside OUT would carry our writes out of it
            for d in dirs:
                if os.path.islink(os.path.join(root, d)):
                    raise UserError(f"{os.path.join(root, d)}: a symbolic link to a folder inside the output folder; "
                                    "remove the link (outputs are never written through links)")
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                                 "since": time.time()}).encode())
        for stale in folder.rglob(f".*{TMP_SUFFIX}"):  # a killed writer's temp files: we hold the lock
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
        yield
    finally:
        lock.unlink(missing_ok=True)  # while still holding it: a waiter that opened it retries (inode check)
        os.close(fd)
        if created and not any(folder.iterdir()):
            folder.rmdir()  # bad input stopped the command before it wrote anything: leave no empty folder


def output_dir(out: str) -> Path:
    """Create the output folder `out` (option `out`) or say why it cannot be written."""
    path = Path(out)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OptionError({"out": out}, f"cannot create it ({e.strerror}); choose a writable folder") from None
    if not os.access(path, os.W_OK):
        raise OptionError({"out": out}, "not writable; choose a writable folder")
    return path


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load, but a key given twice is an error (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: config file not found")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        problem = f" ({e.problem})" if getattr(e, "problem", None) else ""
        raise UserError(f"{path}: not valid YAML{at}{problem}; fix it") from None
    except (ValueError, RecursionError) as e:  # a 5000-digit integer, nesting deeper than Python's stack
        raise UserError(f"{path}: a value cannot be read ({str(e)[:80] or type(e).__name__}); fix it") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of option names to values at the top level")
    return data
