"""Files: atomic writes (every file appears whole or not at all: temp file in the same folder, then rename),
JSON/JSONL/YAML reading, output folders and their lock."""

from __future__ import annotations

import contextlib
import json
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
    os.chmod(tmp, file_mode())
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
    except OSError as e:
        raise UserError(f"{path}: cannot append to it ({e.strerror or e}); free some space or choose another output") from None


def truncate_jsonl(path: str | os.PathLike, keep) -> None:
    """Rewrite a log keeping the rows for which keep(row) is true (a resumed run drops what it will redo)."""
    if Path(path).is_file():
        write_jsonl(path, [r for r in read_jsonl(path) if keep(r)])


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a log written by append_jsonl (a torn last line from a crash is dropped)."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.endswith("\n"):
                rows.append(json.loads(line))
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


LOCK_NAME = ".grasp-lora.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def output_lock(folder: str | os.PathLike, command: str) -> Iterator[None]:
    """Hold FOLDER/.grasp-lora.lock while a command writes FOLDER; a second writer is refused with the
    holder's pid, host and command. A lock left by a dead process on this host is taken over."""
    folder = Path(folder)
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{folder}: cannot create it ({e.strerror}); choose a writable output folder") from None
    lock = folder / LOCK_NAME
    me = {"pid": os.getpid(), "host": socket.gethostname(), "command": command, "since": time.time()}
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            try:
                holder = json.loads(lock.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                holder = {}
            same_host = holder.get("host") == me["host"]
            if holder and same_host and not _alive(int(holder.get("pid", -1))):
                lock.unlink(missing_ok=True)  # stale: its process is gone
                continue
            who = (f"pid {holder.get('pid')} on {holder.get('host')} ({holder.get('command')})" if holder
                   else "an unreadable lock")
            raise UserError(f"{folder}: another grasp-lora command is writing here: {who}; wait for it, "
                            f"use another output folder, or delete {lock} if that process is gone") from None
        except OSError as e:
            raise UserError(f"{folder}: cannot write here ({e.strerror}); choose a writable output folder") from None
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        break
    for stale in folder.rglob(f".*{TMP_SUFFIX}"):  # a killed writer's temp files: we hold the lock, nobody else writes
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
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
