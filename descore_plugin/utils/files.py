"""Atomic writes (a checkpoint is either wholly there or not there at all) whose files follow the umask.

A run killed while saving leaves the previous checkpoint untouched: everything is written into a temporary sibling
directory, which is renamed over the target only once complete.

Permissions: `tempfile.mkdtemp` / `mkstemp` create private (0700 / 0600) entries, and safetensors (0.8) writes its
files through such a temporary file too, so a rename would publish models, LoRA weights and videos that a teammate
or a reward server on a shared machine cannot read. Everything published here gets the mode an ordinary
`open()` / `mkdir()` would give under the process umask (0644 / 0755 with umask 022): `follow_umask`.
"""

import contextlib
import os
import shutil
import tempfile
import threading
from pathlib import Path

__all__ = ["atomic_directory", "atomic_write_text", "follow_umask", "current_umask"]

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where the OS says it (/proc/self/status on Linux >= 4.7)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    with _UMASK_LOCK:  # elsewhere the only way to read it is to set it and put it back
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def follow_umask(path) -> Path:
    """Give `path` (and, for a directory, everything under it) the mode a fresh file or folder gets under the
    current umask: 0o666 & ~umask for files (0o777 & ~umask if the file was executable), 0o777 & ~umask for
    directories. Symlinks are left alone. Use it on what this process just wrote, before publishing it."""
    path = Path(path)
    mask = current_umask()
    file_mode, exec_mode = 0o666 & ~mask, 0o777 & ~mask

    def fix(entry: Path):
        if entry.is_symlink():
            return
        mode = entry.stat().st_mode
        if entry.is_dir():
            os.chmod(entry, exec_mode)
        else:
            os.chmod(entry, exec_mode if mode & 0o100 else file_mode)

    fix(path)
    if path.is_dir() and not path.is_symlink():
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                fix(Path(root) / name)
    return path


@contextlib.contextmanager
def atomic_directory(path):
    """Yield a temporary directory; on success it replaces `path` (rename), on failure it is removed.
    What was written gets the umask's modes (`follow_umask`) before the rename.

        with atomic_directory("out/checkpoint-100") as tmp:
            model.save_pretrained(tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        follow_umask(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists():
        old = path.parent / f".{path.name}.old-{os.getpid()}"
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def atomic_write_text(path, text: str):
    """Write `text` to `path` through a temporary sibling and a rename; the file follows the umask."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        follow_umask(tmp)
        os.replace(tmp, path)
        return path
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
