"""File helpers every command uses: outputs written atomically, never onto an input, and content hashes.

An output is written to a temporary file beside it and renamed over it only when complete, so a
failure, Ctrl-C or SIGTERM leaves the old file (or none), never half of one; an output that would
fall on an input file is refused before anything is written.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import signal
import stat
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from .errors import ToolkitError

PathLike = str | os.PathLike[str]
#: Largest text file read whole (labels, engine sidecars, package manifests): far above any the toolkit writes or a
#: class list needs, low enough that a wrong file, or a device that never ends (``/dev/zero``), is refused unread.
MAX_TEXT_BYTES = 16 * 1024 * 1024


def read_text(path: PathLike, limit: int = MAX_TEXT_BYTES) -> str:
    """The UTF-8 text of ``path`` (a byte-order mark dropped), read whole when it is at most ``limit`` bytes; a
    longer file or stream raises ``ValueError`` naming the limit (as a file that is not UTF-8 does), an unreadable
    one ``OSError``."""
    with open(path, "rb") as handle:
        raw = handle.read(limit + 1)
    if len(raw) > limit:
        raise ValueError(f"longer than {limit // (1024 * 1024)} MiB")
    return raw.decode("utf-8-sig")


def _same_file(a: Path, b: Path) -> bool:
    """The same file: one path, or two names of one inode (symlinks and hard links included)."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist yet: compare where they would be
        return a.resolve() == b.resolve()


def _unwritable(path: Path) -> str | None:
    """Why ``path`` cannot be written, judged before any work from the nearest folder that exists: it is a
    file, or it cannot be written into. None when it looks writable (the write itself still has the last word)."""
    if _special_file(path):
        return None
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                return f"{os.fspath(parent)!r} is a file, not a folder"
            if not os.access(parent, os.W_OK | os.X_OK):
                return os.strerror(errno.EACCES) + f" (in {os.fspath(parent)!r})"
            return None
    return None


def refuse_overwriting_inputs(outputs: Iterable[PathLike | None], inputs: Iterable[PathLike | None]) -> None:
    """Exit 2 naming both paths when any output is one of the inputs (resolved, links followed), and
    before any work, when an output is a folder or its folder cannot be written (the write would fail
    only at the end)."""
    sources = [Path(p) for p in inputs if p is not None]
    for out in (Path(p) for p in outputs if p is not None):
        if out.is_dir():
            raise ToolkitError(f"output {os.fspath(out)!r} is a folder; give a file path")
        reason = _unwritable(out)
        if reason:
            raise ToolkitError(f"cannot write {os.fspath(out)!r}: {reason}; choose a writable path")
        for source in sources:
            if _same_file(out, source):
                raise ToolkitError(
                    f"output {os.fspath(out)!r} is the input {os.fspath(source)!r}; inputs are never overwritten: "
                    "choose another output path"
                )


def _special_file(path: Path) -> bool:
    """An existing device, FIFO or socket (``/dev/null``, ``/dev/stdout``, a named pipe): written in place,
    never renamed over (a rename would replace the device node itself)."""
    try:
        mode = os.stat(path).st_mode  # follows symlinks: /dev/stdout -> the terminal or pipe
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def missing_parents(path: Path) -> list[Path]:
    """The folders above ``path`` that do not exist yet, outermost last (removed again if the write fails)."""
    missing = []
    for parent in path.parents:
        if parent.exists():
            break
        missing.append(parent)
    return missing


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path``; rename it over ``path`` only if the block succeeds.

    An ``OSError`` (read-only or full file system, the path is a folder, a size limit) becomes a
    one-line :class:`ToolkitError` naming ``path``; the temporary file, and any folder made for it,
    is removed on any exit (errors, Ctrl-C, SIGTERM). A device or pipe (``/dev/stdout``) is written
    in place.
    """
    target = Path(path)
    tmp: str | None = None
    made: list[Path] = []
    try:
        if target.is_dir():
            raise IsADirectoryError(errno.EISDIR, "it is a folder")
        if _special_file(target):
            with open(target, mode) as handle:
                yield handle
            return
        made = missing_parents(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file ordinary permissions
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        tmp = None
        made = []
    except OSError as err:
        raise ToolkitError(f"cannot write {os.fspath(target)!r}: {_reason(err)}; choose a writable path") from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        for folder in made:  # innermost first; only folders this call made, and only while empty
            with contextlib.suppress(OSError):
                folder.rmdir()


def _reason(err: OSError) -> str:
    """What went wrong, in words: the system's text for the errno (``No space left on device``)."""
    if err.errno is not None:
        return err.strerror or os.strerror(err.errno)
    return str(err) or type(err).__name__


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends, then act on them (e.g. while an artefact and its
    sidecar are renamed into place together). Main thread only, where Python runs signal handlers."""
    arrived: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM)
    previous = {signum: signal.signal(signum, lambda signum, _frame: arrived.append(signum)) for signum in held}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if arrived:
            signal.raise_signal(arrived[0])


def sha256_file(path: PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class RecordedFile:
    """Where :func:`find_recorded_file` found a recorded file: ``found`` has the recorded sha256; else
    ``changed`` is the first candidate present with another (None: no candidate exists)."""

    found: Path | None
    changed: Path | None = None


def find_recorded_file(recorded: PathLike, sha256: str, folders: Iterable[PathLike]) -> RecordedFile:
    """The one lookup of a file an artefact records (a checkpoint, the FP32 graph of a reduced graph, the
    graphs of an engine): by its name and sha256, never trusted by its path alone.

    ``recorded`` is a file name (or, in artefacts written before names were recorded, a path). Candidates,
    in order: an absolute recorded path as it is, a relative one under each of ``folders`` (beside the
    artefact, the working directory, ...); then the recorded name in each of ``folders``. The first
    candidate whose sha256 is ``sha256`` is the file.
    """
    path = Path(recorded)
    places = [Path(folder) for folder in folders]
    candidates = ([path] if path.is_absolute() else [folder / path for folder in places]) + [
        folder / path.name for folder in places
    ]
    seen: set[str] = set()
    changed: Path | None = None
    for candidate in candidates:
        key = os.path.abspath(candidate)
        if key in seen:
            continue
        seen.add(key)
        try:
            if not candidate.is_file():
                continue
            if sha256 and sha256_file(candidate) == sha256:
                return RecordedFile(candidate)
        except OSError:
            continue
        changed = changed or candidate
    return RecordedFile(None, changed)
