"""Files and folders a command writes where the user said: checked before any work, and
written whole (a temporary renamed into place), so a full disk or Ctrl-C never leaves a
half-written file that looks finished. Dataset shards have their own rules (store.py).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Collection
from pathlib import Path

from synthgen.errors import UserError
from synthgen.store import temporary_path


def check_output_file(path: Path, option: str, suffixes: Collection[str] | None = None) -> None:
    """A file the user asked for can be written there, or one UserError that says why."""
    if suffixes is not None and path.suffix.lower() not in suffixes:
        raise UserError(f"{option} {path}: the file name must end in one of {', '.join(suffixes)} "
                        "(it sets the image format)")
    if path.is_dir():
        raise UserError(f"{option} {path}: is a folder; give a file name")
    if path.exists() and not path.is_file():
        # The file is written beside and renamed over: a device or pipe (/dev/stdout, a FIFO)
        # would be replaced by a plain file, which as root would remove /dev/null.
        raise UserError(f"{option} {path}: is a device, pipe or socket, not a file; give the "
                        "name of a file to write")
    parent = path.parent if str(path.parent) else Path(".")
    if parent.exists() and not parent.is_dir():
        raise UserError(f"{option} {path}: {parent} is not a folder; choose another path")
    if not parent.is_dir():
        raise UserError(f"{option} {path}: the folder {parent} does not exist; create it first "
                        "or choose another path")
    _check_writable(parent, option, path)


def check_output_folder(folder: Path, option: str) -> None:
    """A folder the user asked for can be created or written into, or one UserError."""
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{option} {folder}: exists and is not a folder; choose another path")
    existing = folder
    while not existing.is_dir():
        if existing.exists() or existing.parent == existing:
            raise UserError(f"{option} {folder}: cannot be created ({existing} is not a folder); "
                            "choose another path")
        existing = existing.parent
    _check_writable(existing, option, folder)


def _check_writable(folder: Path, option: str, target: Path) -> None:
    # Trying is the only honest test: os.access says yes to root on a read-only mount's
    # files, and no permission bits tell whether the disk has room.
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise UserError(f"{option} {target}: cannot write in {folder} ({error.strerror}); choose "
                        "a place you can write to") from None


@contextlib.contextmanager
def file_written_whole(path: Path):
    """Yields a temporary path beside `path`; renamed to `path` only if the block succeeds."""
    temporary = temporary_path(path)
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


@contextlib.contextmanager
def folder_written_whole(folder: Path):
    """Yields an empty temporary folder beside `folder`; it becomes `folder` (which must not
    exist, or be empty) only if the block succeeds, and is removed otherwise. A link to an
    empty folder is written through: the folder it names is the one replaced (a rename onto
    the link itself fails, and the temporary must be on the target's disk to be renamed)."""
    if folder.is_symlink():
        folder = folder.resolve()
    temporary = temporary_path(folder)
    temporary.mkdir(parents=True)
    try:
        yield temporary
        os.replace(temporary, folder)  # POSIX rename replaces an empty folder, no other
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
