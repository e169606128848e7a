"""Atomic directory writes: a checkpoint is either wholly there or not there at all.

A run killed while saving leaves the previous checkpoint untouched: everything is written into a temporary sibling
directory, which is renamed over the target only once complete.
"""

import contextlib
import os
import shutil
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_directory(path):
    """Yield a temporary directory; on success it replaces `path` (rename), on failure it is removed.

        with atomic_directory("out/checkpoint-100") as tmp:
            model.save_pretrained(tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
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
