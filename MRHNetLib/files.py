"""Small file helpers shared by the engine: atomic writes, their temporaries, and content hashes.

Every file the engine writes goes through :func:`atomic_output`: the content is written to a temporary
file beside the target, then renamed over it, so a reader (or a process killed mid-write) never sees a
partial file. Temporaries are named ``.<name>.partial-<host>-<pid>-<random>``: hidden, and never ending
in the target's suffix, so they match no ``*.nii.gz`` (or ``*.json``...) glob. They are created with mode
``0666`` minus the umask (0644 under the usual 022), like any file a program opens, so the result is
readable by whoever the user's umask allows. A later write into the same folder removes the temporaries
that killed processes left there (:func:`remove_stale_temporaries`).
"""
from __future__ import annotations

import hashlib
import os
import re
import secrets
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

PARTIAL = ".partial-"
STALE_AFTER_S = 24 * 3600  # a temporary of another machine (shared folder) older than this is stale
LEGACY_STALE_AFTER_S = 600  # ``.tmp-<stem>-xxxx<suffix>`` of earlier versions (no process id recorded)
_NAME = re.compile(r"^\.(?P<target>.+)\.partial-(?P<host>[A-Za-z0-9]*)-(?P<pid>\d+)-[0-9a-f]+$")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except OSError:
        return True
    return True


def _age_s(path: Path) -> float:
    try:
        return time.time() - path.lstat().st_mtime
    except OSError:
        return 0.0


def is_stale_temporary(path: Path) -> bool:
    """Whether ``path`` is a temporary of :func:`atomic_output` whose writer is gone: a process of this
    machine that no longer runs, or any older than :data:`STALE_AFTER_S` (another machine's in a shared
    folder; a process id used again since)."""
    m = _NAME.match(path.name)
    if not m or path.is_symlink() or not path.is_file():
        return False
    if _age_s(path) > STALE_AFTER_S:
        return True
    pid = int(m["pid"])
    return m["host"] == _host() and pid != os.getpid() and not _alive(pid)


def _is_legacy_temporary(path: Path, name: str) -> bool:
    """An earlier version's ``.tmp-<stem>-xxxx<suffix>`` temporary for target ``name``, left long enough
    (:data:`LEGACY_STALE_AFTER_S`) to be a killed writer's."""
    stem = name.split(".")[0]
    return (path.name.startswith(f".tmp-{stem}-") and path.name.endswith(name[len(stem):])
            and not path.is_symlink() and path.is_file() and _age_s(path) > LEGACY_STALE_AFTER_S)


def remove_stale_temporaries(folder: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Delete the stale temporaries in ``folder`` (only those for target ``name`` when given, with that
    target's old-style ``.tmp-...`` temporaries of earlier versions); returns what was removed."""
    folder = Path(folder)
    try:
        entries = [Path(e.path) for e in os.scandir(folder) if e.name.startswith(".")]
    except OSError:
        return []
    removed = []
    for p in entries:
        if name is None:
            stale = is_stale_temporary(p)
        else:
            stale = (p.name.startswith(f".{name}{PARTIAL}") and is_stale_temporary(p)) or _is_legacy_temporary(p, name)
        if stale:
            try:
                p.unlink()
                removed.append(p)
            except OSError:
                pass
    return removed


def temporary_beside(path: str | os.PathLike) -> Path:
    """Create an empty temporary file next to ``path`` (mode 0666 minus the umask) and return it."""
    path = Path(path)
    for _ in range(100):
        tmp = path.with_name(f".{path.name}{PARTIAL}{_host()}-{os.getpid()}-{secrets.token_hex(4)}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"{path}: cannot create a temporary file beside it")


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s content to; on success it is renamed to ``path``.

    On any error (or a kill) ``path`` is untouched; the temporary is removed (or, after a kill, by the
    next write into the folder). The folder is created when missing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent, path.name)
    tmp = temporary_beside(path)
    mode = tmp.stat().st_mode & 0o7777
    try:
        yield tmp
        if tmp.stat().st_mode & 0o7777 != mode:  # a writer that re-created the file
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def check_writable_folder(folder: str | os.PathLike) -> None:
    """Refuse (:class:`~MRHNetLib.errors.MRHNetError`, one line naming the path) a folder that cannot be
    created or written; its nearest existing ancestor decides. Nothing is created."""
    from .errors import MRHNetError

    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        if existing.is_symlink():  # a dangling link
            raise MRHNetError(f"{existing}: is a broken link; cannot create the output folder {folder}")
        existing = existing.parent
    if not existing.is_dir():
        raise MRHNetError(f"{existing}: is a file, not a folder; cannot create the output folder {folder}")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "output folder" if existing == folder else f"folder in which to create {folder}"
        raise MRHNetError(f"{existing}: no permission to write to this {what}")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (:func:`atomic_output`), flushed to disk before the rename."""
    path = Path(path)
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def read_json(path: str | os.PathLike):
    """Parse a JSON file; a clear :class:`~MRHNetLib.errors.MRHNetError` when it is not valid JSON."""
    import json

    from .errors import MRHNetError

    try:
        return json.loads(Path(path).read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MRHNetError(f"{path}: is not valid JSON ({exc})") from None


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's content, read in 1 MB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def remove_own_files(folder: str | os.PathLike, ours: Callable[[str], bool]) -> None:
    """Delete the plain files of ``folder`` whose names ``ours`` recognises, then the folder if that emptied
    it: anything else (a user's file, a link) is never deleted, and the folder then stays with it."""
    folder = Path(folder)
    if folder.is_symlink() or not folder.is_dir():
        return
    for p in folder.iterdir():
        if p.is_file() and not p.is_symlink() and ours(p.name):
            p.unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:
        pass
