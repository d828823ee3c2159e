"""Output files and folders: checked before a run, written atomically, never replaced by
surprise.

A generation takes minutes, so everything that would stop its result from being saved (a bad
name, a missing folder, an existing file, a full disk) is refused before it starts. Writing goes
through a temporary file in the same folder that is moved in place only when complete, so a
failed save never leaves half a file or destroys the previous one. An output folder (export)
is written the same way: into a private folder beside it, moved in place when complete.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import stat
import tempfile
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from sigma_core.errors import SigmaInputError, SigmaResourceError
from sigma_core.geometry import MAX_SIDE
from sigma_core.inputs.images import size_text

# An uncompressed output of the largest size, and 1 MB for the metadata.
DEFAULT_NEEDED_BYTES = MAX_SIDE * MAX_SIDE * 3 + 2**20

# errno values of os.link on file systems without hard links (FAT, some network shares).
_NO_HARD_LINKS = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS})
# errno values that mean the disk (or the user's share of it) is full.
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


def check_output_path(
    path: str | os.PathLike, *, overwrite: bool, needed_bytes: int = DEFAULT_NEEDED_BYTES
) -> Path:
    """``path`` as a Path, once it is sure a PNG can be written there; call it before a run.

    Refuses an empty name, a name the OS cannot use, a folder, a name not ending in .png, a
    folder that is missing, is a file or is not writable, an existing file unless ``overwrite``,
    and a disk with less than ``needed_bytes`` free.
    """
    if os.fspath(path) == "":
        raise SigmaInputError("output path is empty; give a file name ending in .png")
    out = Path(path)
    shown = repr(os.fspath(path))
    existing = _stat(out, f"output path {shown}")
    if existing is not None and not stat.S_ISREG(existing.st_mode):
        if stat.S_ISDIR(existing.st_mode):
            raise SigmaInputError(
                f"output path {shown} is a folder; give a file name in it, such as "
                f"{str(out / 'image.png')!r}"
            )
        raise SigmaInputError(f"output path {shown} exists and is not a regular file")
    if out.suffix.lower() != ".png":
        raise SigmaInputError(
            f"output path {shown} does not end in .png; the output is always a PNG image"
        )
    _check_folder(out.parent)
    if existing is not None and not overwrite:
        raise SigmaInputError(
            f"output file {shown} already exists; pass --overwrite to replace it, or choose "
            "another name"
        )
    _check_free(out.parent, needed_bytes)
    return out


def _check_free(folder: Path, needed_bytes: int) -> None:
    free = shutil.disk_usage(folder).free
    if free < needed_bytes:
        raise SigmaResourceError(
            f"not enough free disk space in {str(folder)!r}: {size_text(free)} free, about "
            f"{size_text(needed_bytes)} needed; free some space or choose another folder"
        )


def _stat(path: Path, what: str) -> os.stat_result | None:
    """``path``'s status, or None when nothing is there; a name the OS refuses (a NUL byte,
    too long) is a SigmaInputError."""
    try:
        return path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        raise SigmaInputError(f"{what}: cannot be used ({e.strerror or e})") from None
    except ValueError as e:  # an embedded NUL byte
        raise SigmaInputError(f"{what}: cannot be used ({e})") from None


def _check_folder(folder: Path) -> None:
    shown = repr(str(folder))
    try:
        st = folder.stat()
    except FileNotFoundError:
        raise SigmaInputError(f"output folder {shown} does not exist; create it first") from None
    except NotADirectoryError:
        st = None
    if st is None or not stat.S_ISDIR(st.st_mode):
        raise SigmaInputError(f"output folder {shown} is not a folder: a file is in the way")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise SigmaInputError(f"output folder {shown} is not writable (permission denied)")


def write_atomic(path: Path, write: Callable[[BinaryIO], object], *, overwrite: bool) -> Path:
    """Write a file through a temporary file in its folder, then move it in place.

    With ``overwrite`` an existing file is replaced. Without, one is never replaced, even one
    that appeared since :func:`check_output_path`: the result goes to the next free name
    (``stem-2.png``, ``stem-3.png`` ...), so nothing is lost. Returns the path written. A disk
    that fills up is a SigmaResourceError, any other OS error a SigmaInputError; either way no
    temporary file is left.
    """
    tmp = path.with_name(f".{path.name[:200]}.{secrets.token_hex(6)}.tmp")
    try:
        # O_EXCL: never write into something already there; 0o666 lets the umask decide
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as e:
        raise _write_error(path, e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
            return path
        target, n = path, 1
        while not _claim(tmp, target):
            n += 1
            target = path.with_name(f"{path.stem}-{n}{path.suffix}")
        return target
    except OSError as e:
        raise _write_error(path, e) from None
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> Path:
    """Replace ``path`` with ``text`` (UTF-8) through :func:`write_atomic`: a reader sees the
    old file or the new one, never half of either."""
    return write_atomic(path, lambda f: f.write(text.encode("utf-8")), overwrite=True)


def _claim(tmp: Path, target: Path) -> bool:
    """Put ``tmp``'s file at ``target`` unless something is there (then False), in one step."""
    try:
        os.link(tmp, target)
    except FileExistsError:
        return False
    except OSError as e:
        if e.errno not in _NO_HARD_LINKS:
            raise
        # No hard links here (FAT, some network shares): reserve the name, then replace it.
        try:
            os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            return False
        os.replace(tmp, target)
    return True


def _write_error(path: Path, e: OSError) -> SigmaInputError | SigmaResourceError:
    if e.errno in _DISK_FULL:
        return SigmaResourceError(
            f"disk full while writing {str(path)!r}: free some space or choose another folder"
        )
    return SigmaInputError(f"cannot write {str(path)!r}: {e.strerror or e}")


def check_output_folder(
    path: str | os.PathLike,
    *,
    overwrite: bool,
    needed_bytes: int,
    keep: Collection[str] = (),
    kept: str = "",
    what: str = "OUT_DIR",
) -> Path:
    """``path`` as a Path, once it is sure a folder can be written there: new, an empty folder
    or, with ``overwrite``, a folder of other files; call it before the work.

    Refuses an empty name, a name the OS cannot use, a file (or device) in the way, a folder
    holding any of the files named in ``keep`` (``kept`` says what they are) even with
    ``overwrite``, and a disk with less than ``needed_bytes`` free. Missing parents are fine.
    ``what`` names the folder in messages as the command's option does.
    """
    if os.fspath(path) == "":
        raise SigmaInputError(f"{what} is empty; give the name of a new folder")
    out, shown = Path(path), repr(os.fspath(path))
    existing = _stat(out, f"{what} {shown}")
    if existing is not None:
        _check_replaceable(out, existing, overwrite=overwrite, keep=keep, kept=kept, what=what)
    parent = _existing_parent(out.absolute().parent)
    if not parent.is_dir():
        raise SigmaInputError(f"{what} {shown}: {str(parent)!r} is a file, not a folder")
    _check_free(parent, needed_bytes)
    return out


def check_run_folder(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a Path, once it is sure a run can write into it: an existing, writable
    folder (its contents are the caller's business: a run resumes from them), or a new one
    whose nearest existing parent is a writable folder. Call it before the work."""
    out, shown = Path(path), repr(os.fspath(path))
    existing = _stat(out, f"{what} {shown}")
    if existing is not None and not stat.S_ISDIR(existing.st_mode):
        raise SigmaInputError(f"{what} {shown} exists and is not a folder; choose a folder")
    parent = _existing_parent(out.absolute())
    if not parent.is_dir():
        raise SigmaInputError(f"{what} {shown}: {str(parent)!r} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise SigmaInputError(
            f"{what} {shown}: {str(parent)!r} is not writable (permission denied or a "
            "read-only file system)"
        )
    return out


def _existing_parent(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists: where a new folder would be made."""
    while not path.exists():
        path = path.parent
    return path


def _check_replaceable(
    out: Path,
    existing: os.stat_result,
    *,
    overwrite: bool,
    keep: Collection[str],
    kept: str,
    what: str,
) -> None:
    """Refuse what :func:`check_output_folder` refuses of something already at ``out``."""
    shown = f"{what} {str(out)!r}"
    if not stat.S_ISDIR(existing.st_mode):
        raise SigmaInputError(f"{shown} exists and is not a folder; choose a new folder")
    try:
        names = {p.name for p in out.iterdir()}
    except OSError as e:
        raise SigmaInputError(f"{shown}: cannot be read ({e.strerror or e})") from None
    held = sorted(names & set(keep))
    if held:
        raise SigmaInputError(
            f"{shown} holds {kept} ({', '.join(held)}), which is never replaced, "
            "even with --overwrite; choose a new folder"
        )
    if names and not overwrite:
        raise SigmaInputError(
            f"{shown} already exists and is not empty; pass --overwrite to replace "
            "it, or choose a new folder"
        )


@contextmanager
def staged_folder(path: Path) -> Iterator[Path]:
    """A private folder beside ``path`` to write into, moved to ``path`` when the block ends
    (a folder already there, checked by :func:`check_output_folder`, is replaced only then).
    An error removes it and leaves ``path`` as it was; an OSError becomes a SigmaInputError,
    or a SigmaResourceError when the disk is full."""
    staging = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{path.name[:100]}.writing-", dir=path.parent))
        yield staging
        _move_folder(staging, path)
    except OSError as e:
        raise _write_error(path, e) from None
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)


def _move_folder(staging: Path, path: Path) -> None:
    """Rename ``staging`` to ``path``; a folder there is moved aside first and back on failure."""
    if not os.path.lexists(path):
        os.rename(staging, path)
        return
    old = path.with_name(f".{path.name[:100]}.old-{secrets.token_hex(6)}")
    os.rename(path, old)
    try:
        os.rename(staging, path)
    except OSError:
        os.rename(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)
