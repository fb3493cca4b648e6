"""Write a whole directory or nothing: build it beside the target, then rename it into place."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Yield an empty staging directory that replaces ``target`` only if the block finishes.

    The staging directory lives in ``target``'s parent so the final rename stays on one filesystem (and is
    atomic there). If the block raises, the staging directory is removed and an existing ``target`` is left
    untouched, so a crash never leaves a half-written dataset behind.
    """
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"{target} exists and is not a directory")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        # mkdtemp creates 0700 directories; published data should be readable like any other folder.
        staging.chmod(0o755)
        yield staging
        if target.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.retired-", dir=target.parent))
            retired.rmdir()
            os.rename(target, retired)
            try:
                os.rename(staging, target)
            except BaseException:
                os.rename(retired, target)  # put the previous version back rather than leave nothing
                raise
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
