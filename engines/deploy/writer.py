"""The package on disk: every file planned first, built in a folder beside the target, renamed into place.

A package folder holds a manifest (``.idlevit-package.json``: the path and sha256 of every file
the package wrote). A non-empty folder is refused unless ``force``, and even then unless it holds
such a manifest (a package is replaced whole: another folder is never touched); with ``force`` a file is
replaced only when the manifest lists it and its bytes are still the ones written (anything
else is hand-edited or foreign, and kept), and files of the earlier package that this one no
longer has are left out on the same terms. Only plain files reached without a link count as
the package's own: a link, or anything behind one, is the user's and is kept as it is.

Nothing is written until every file's content is known, and no output may be one of the
inputs. The new package is built in a hidden folder beside the target (``.<name>.*.tmp``): the
earlier package's kept files are linked into it (hard links: nothing is copied or moved), the
new files written, and only then is it renamed into place, with Ctrl-C and SIGTERM held for the
two renames. A failure, a full disk or a signal before that leaves the earlier package as it
was (or no folder at all), and removes the hidden folder.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import idlevit
from idlevit.errors import ToolkitError, shown
from idlevit.fileio import missing_parents, read_text, refuse_overwriting_inputs, sha256_file, signals_deferred
from idlevit.metadata import external_data_files, load_onnx
from idlevit.names import package_dir_name

from ..labels import check_labels, read_labels
from .deepstream import deepstream_config, label_line, network_mode, preprocessing
from .guide import deploy_markdown
from .layout import (
    GUIDE,
    KIND_ONNX,
    KIND_RTX,
    MANIFEST,
    Layout,
    check_name,
    default_name,
    package_layout,
)
from .source import DeploySource, read_source
from .triton import triton_config_text

MANIFEST_FORMAT = 1
#: The plugin's build inputs (CMake, CUDA, C++, its README); the Python helpers stay behind.
PLUGIN_SOURCE_SUFFIXES = (".txt", ".md", ".cu", ".cuh", ".h", ".cpp")


@dataclass
class PackageFile:
    """One file of a package: its text, or the file it is a copy of."""

    path: str  # relative to the package folder, '/'-separated
    text: str | None = None
    copy_of: Path | None = None

    def sha256(self) -> str:
        if self.copy_of is None:
            return hashlib.sha256((self.text or "").encode("utf-8")).hexdigest()
        try:
            return sha256_file(self.copy_of)
        except OSError as err:
            raise ToolkitError(
                f"cannot read {os.fspath(self.copy_of)!r}: {err.strerror or err}; check its permissions"
            ) from None


@dataclass
class PackageReport:
    """What a run did, file by file, and what the user should know about the result."""

    root: Path
    source: DeploySource
    layout: Layout
    written: list[str] = field(default_factory=list)  # new files
    replaced: list[str] = field(default_factory=list)  # files the earlier package wrote, unchanged since
    kept_edited: list[str] = field(default_factory=list)  # the earlier package's files, edited since: kept
    kept_foreign: list[str] = field(default_factory=list)  # files this package would write, not ours: kept
    removed: list[str] = field(default_factory=list)  # the earlier package's files this one no longer has
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        count = len(self.written) + len(self.replaced)
        lines = [f"wrote {self.root}/ ({self.layout.kind} package of {self.source.model.name}, {count} files):"]
        lines += [f"  new       {p}" for p in self.written]
        lines += [f"  replaced  {p}" for p in self.replaced]
        lines += [f"  removed   {p} (the earlier package had it, this one does not)" for p in self.removed]
        lines += [f"  kept      {p} (edited since engines.package wrote it; not replaced)" for p in self.kept_edited]
        lines += [f"  kept      {p} (not written by engines.package; not replaced)" for p in self.kept_foreign]
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


# ---- manifest ---------------------------------------------------------------------------------
def _safe_relative(path: str) -> bool:
    pure = PurePosixPath(path)
    return (
        bool(path)
        and not pure.is_absolute()
        and ".." not in pure.parts
        and "\\" not in path
        and "\0" not in path
        and pure.as_posix() == path
    )


def read_manifest(root: Path) -> dict[str, list[str]]:
    """Path -> accepted sha256s of the files an earlier package wrote here ({} when there is no manifest)."""
    path = root / MANIFEST
    where = os.fspath(path)
    fix = "delete it (every file is then treated as foreign and kept) or choose another --out"
    if not path.exists():
        return {}
    try:
        data = json.loads(read_text(path))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ToolkitError(f"package manifest {where!r} is unreadable ({shown(err, 80)}); {fix}") from None
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict):
        raise ToolkitError(f"package manifest {where!r} has no files object; {fix}")
    manifest: dict[str, list[str]] = {}
    for name, sha in files.items():
        shas = [sha] if isinstance(sha, str) else sha
        if not _safe_relative(name) or not isinstance(shas, list) or not all(isinstance(s, str) for s in shas):
            raise ToolkitError(f"package manifest {where!r} has a bad entry {shown(name)}; {fix}")
        manifest[name] = shas
    return manifest


def _manifest_text(files: dict[str, str]) -> str:
    data = {
        "format": MANIFEST_FORMAT,
        "written_by": "python -m engines.package",
        "toolkit_version": idlevit.__version__,
        "files": dict(sorted(files.items())),
    }
    return json.dumps(data, indent=2) + "\n"


# ---- what goes in -----------------------------------------------------------------------------
def _plugin_sources(layout: Layout) -> list[PackageFile]:
    import plugins  # lazy: only packages whose graph uses the plugin carry its sources

    root = Path(plugins.__file__).resolve().parent
    if not (root / "CMakeLists.txt").is_file():
        raise ToolkitError(
            f"the plugin's sources are not in this installation ({root / 'CMakeLists.txt'} is missing); "
            "install the toolkit from its repository (`pip install -e .`) to package a plugin graph"
        )
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in PLUGIN_SOURCE_SUFFIXES)
    return [PackageFile(f"{layout.plugin_sources}/{p.relative_to(root).as_posix()}", copy_of=p) for p in files]


def _graph(path: str, graph: Path) -> list[PackageFile]:
    """A graph copied to ``path`` in the package, with the external data files it reads (each checked), which
    go where the graph says they are: beside it, under the names it records."""
    folder = PurePosixPath(path).parent
    data = external_data_files(load_onnx(graph, load_external_data=False), graph)
    return [PackageFile(path, copy_of=graph)] + [
        PackageFile((folder / file.relative_to(graph.parent).as_posix()).as_posix(), copy_of=file) for file in data
    ]


def _packaged_sidecar(source: DeploySource, layout: Layout) -> str:
    """The engine's sidecar as the package carries it: as written, except that its graphs are the package's
    copies, named relative to the sidecar's folder (their sha256 are the copies' too)."""
    assert source.engine is not None and layout.engine_sidecar is not None
    record = dict(source.engine.record)
    folder = PurePosixPath(layout.engine_sidecar).parent
    record["source_onnx"] = PurePosixPath(layout.onnx).relative_to(folder).as_posix()
    record["onnx"] = PurePosixPath(layout.built_from or layout.onnx).relative_to(folder).as_posix()
    return json.dumps(record, indent=2) + "\n"


def plan_files(
    source: DeploySource,
    layout: Layout,
    labels: list[str],
    plugin_lib: str | None = None,
    ds_batch_size: int = 1,
    labels_note: str = "",
) -> list[PackageFile]:
    """Every file of the package with its content (nothing is written)."""
    files: list[PackageFile] = []
    per_line = "\n".join(labels) + "\n"  # Triton and engines.infer: one class per line
    if layout.kind == KIND_RTX:
        assert layout.engine and layout.engine_sidecar and layout.labels and source.engine
        files += [
            PackageFile(layout.engine, copy_of=source.model),
            PackageFile(layout.engine_sidecar, _packaged_sidecar(source, layout)),
            *_graph(layout.onnx, source.graph),
            PackageFile(layout.labels, per_line),
        ]
        if layout.built_from:
            files += _graph(layout.built_from, source.engine.built_from)
    else:
        assert layout.triton_config and layout.triton_model and layout.triton_labels
        files += [
            *(_graph(layout.triton_model, source.model) if source.kind == KIND_ONNX else []),
            *([] if source.kind == KIND_ONNX else [PackageFile(layout.triton_model, copy_of=source.model)]),
            PackageFile(layout.triton_config, triton_config_text(source, layout)),
            PackageFile(layout.triton_labels, per_line),
        ]
        if layout.deepstream_config and layout.deepstream_labels:
            files += [
                PackageFile(layout.deepstream_config, deepstream_config(source, layout, plugin_lib, ds_batch_size)),
                PackageFile(layout.deepstream_labels, label_line(labels)),
            ]
        if layout.onnx != layout.triton_model:  # an engine: the ONNX travels along for device builds
            files += _graph(layout.onnx, source.graph)
        if layout.plugin_sources:
            files += _plugin_sources(layout)
    files.append(PackageFile(GUIDE, deploy_markdown(source, layout, labels_note)))
    seen: dict[str, PackageFile] = {}
    for f in files:
        if f.path == MANIFEST or (f.path in seen and seen[f.path].sha256() != f.sha256()):
            raise ToolkitError(f"two files of the package would be {f.path}; rename the model file")
        seen[f.path] = f
    return list(seen.values())


# ---- on disk ----------------------------------------------------------------------------------
def default_package_dir(model: Path) -> Path:
    return model.with_name(package_dir_name(model.stem))


def _target(root: Path, force: bool) -> Path:
    """The folder the package lands in (an --out that is a link to a folder is that folder), after refusing a
    file there, a link to nothing, and a non-empty folder without ``force``."""
    where = os.fspath(root)
    if root.is_symlink() and not root.exists():
        raise ToolkitError(f"package folder {where!r} is a link to nothing; remove it or choose another --out")
    if root.exists() and not root.is_dir():
        raise ToolkitError(f"package folder {where!r} is a file; choose another --out")
    entries = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
    listed = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
    if entries and not force:
        raise ToolkitError(
            f"package folder {where!r} is not empty ({listed}); pass --force to replace the files an earlier "
            "package wrote there (edited and foreign files are kept), or choose another --out"
        )
    if entries and MANIFEST not in entries:
        raise ToolkitError(
            f"folder {where!r} is not empty ({listed}) and holds no package ({MANIFEST} is missing): --force "
            "replaces a package engines.package wrote, never another folder; choose a new or empty --out"
        )
    return root.resolve() if root.exists() else Path(os.path.abspath(root))


def _plain(root: Path, rel: str) -> bool:
    """``root/rel``'s folders inside the package are real folders (no link leads the path elsewhere, no file
    stands where a folder should be); missing ones are fine."""
    folder = root
    for part in PurePosixPath(rel).parts[:-1]:
        folder = folder / part
        try:
            mode = os.lstat(folder).st_mode
        except FileNotFoundError:
            return True
        if not stat.S_ISDIR(mode):
            return False
    return True


def _ours(root: Path, rel: str, shas: list[str] | None) -> bool:
    """The file is one the earlier package wrote, unchanged since: a plain file reached without a link."""
    if shas is None or not _plain(root, rel):
        return False
    target = root / rel
    try:
        if not stat.S_ISREG(os.lstat(target).st_mode):
            return False
    except OSError:
        return False
    return sha256_file(target) in shas


def _exists(path: Path) -> bool:
    return os.path.lexists(path)


@dataclass
class _Plan:
    """What goes into the new folder: files to write, and the earlier package's files that stay out."""

    write: list[tuple[PackageFile, str]]  # item, its sha256
    leave_out: set[str]  # replaced and stale files of the earlier package, and its manifest


def sort_files(root: Path, files: list[PackageFile], force: bool, report: PackageReport) -> _Plan:
    """Which planned files are written, replaced or kept, and which earlier files are removed; fills ``report``."""
    old = read_manifest(root) if force and root.is_dir() else {}
    plan = _Plan([], {MANIFEST})
    for item in files:
        target = root / item.path
        if not _plain(root, item.path):  # a linked folder (or a file) would lead the write elsewhere
            report.kept_foreign.append(item.path)
            continue
        if not _exists(target):
            report.written.append(item.path)
        elif _ours(root, item.path, old.get(item.path)):
            report.replaced.append(item.path)
            plan.leave_out.add(item.path)
        else:
            (report.kept_edited if item.path in old else report.kept_foreign).append(item.path)
            continue
        plan.write.append((item, item.sha256()))
    planned = {item.path for item in files}
    for name, shas in old.items():
        if name in planned or not _exists(root / name):
            continue
        if _ours(root, name, shas):
            report.removed.append(name)
            plan.leave_out.add(name)
        else:
            report.kept_edited.append(name)
    return plan


def _carry(src: Path, dst: Path) -> None:
    """One entry of the earlier package into the new folder: a hard link to it (a link stays a link, never
    followed); a copy where the file system has no hard links."""
    try:
        os.link(src, dst, follow_symlinks=False)
        return
    except OSError as err:
        if err.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
    if src.is_symlink():
        os.symlink(os.readlink(src), dst)
    else:
        shutil.copy2(src, dst, follow_symlinks=False)


def check_carriable(root: Path) -> None:
    """The earlier package folder can be carried into a new one: no file system is mounted inside it (its files
    could be neither linked nor moved)."""
    for base, dirs, _files in os.walk(root):
        for name in dirs:
            if os.path.ismount(Path(base) / name):
                raise ToolkitError(
                    f"{os.fspath(Path(base) / name)!r} inside package folder {os.fspath(root)!r} is a mount point; "
                    "a package is replaced whole, so choose another --out"
                )


def _carry_over(root: Path, staging: Path, leave_out: set[str]) -> list[Path]:
    """Everything of the earlier folder but ``leave_out`` into ``staging``, folders with their modes and owners.
    Links to folders are carried as links, never entered. Returns the folders that held only left-out files
    (to be removed once the new files are written, unless they hold some)."""
    emptied: list[Path] = []
    for base, dirs, files in os.walk(root):
        here = Path(base)
        rel_base = here.relative_to(root)
        for name in list(dirs):
            if (here / name).is_symlink():
                dirs.remove(name)
                files.append(name)
        for name in dirs:
            made = staging / rel_base / name
            made.mkdir()
            _same_mode_and_owner(here / name, made)
        for name in files:
            rel = (rel_base / name).as_posix()
            if rel not in leave_out:
                _carry(here / name, staging / rel_base / name)
        if files and all((rel_base / name).as_posix() in leave_out for name in files) and not dirs:
            emptied.append(staging / rel_base)
    return emptied


def _prune(staging: Path, emptied: list[Path]) -> None:
    """Remove the folders of :func:`_carry_over` that are still empty, and parents they leave empty."""
    for folder in sorted(emptied, key=lambda p: len(p.parts), reverse=True):
        while folder != staging and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
            folder = folder.parent


def _write_into(staging: Path, item: PackageFile, shown_root: Path) -> None:
    target = staging / item.path
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "xb") as writer:
            if item.copy_of is not None:
                with open(item.copy_of, "rb") as reader:
                    shutil.copyfileobj(reader, writer, 1 << 20)
            else:
                writer.write((item.text or "").encode("utf-8"))
            writer.flush()
            os.fsync(writer.fileno())  # on disk before the folder is renamed into place
    except OSError as err:
        raise ToolkitError(
            f"cannot write {os.fspath(shown_root / item.path)!r}: {err.strerror or err}; nothing was changed: "
            "free some space or choose a writable --out"
        ) from None


def _same_mode_and_owner(source: Path, folder: Path) -> None:
    """``folder`` gets ``source``'s permissions, and its owner where this process may give it (root)."""
    info = os.lstat(source)
    os.chmod(folder, stat.S_IMODE(info.st_mode))
    if os.geteuid() == 0 and (info.st_uid, info.st_gid) != (0, 0):
        with contextlib.suppress(OSError):
            os.chown(folder, info.st_uid, info.st_gid)


def _staging_folder(target: Path, shown_root: Path) -> tuple[Path, list[Path]]:
    """A hidden empty folder beside ``target`` (folders above it made as needed), with the mode the package
    folder has (or would get)."""
    made = missing_parents(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name[:100]}.", suffix=".tmp", dir=target.parent))
    except OSError as err:
        for folder in made:
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise ToolkitError(
            f"cannot create package folder {os.fspath(shown_root)!r}: {err.strerror or err} (a package is built "
            f"in a folder beside it and renamed into place); choose a writable --out"
        ) from None
    if target.is_dir():
        _same_mode_and_owner(target, staging)
    else:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)
    return staging, made


def _swap_in(staging: Path, target: Path) -> Path | None:
    """Rename ``staging`` to ``target``; an existing ``target`` is renamed away first and returned (to be
    removed), or renamed back if the second rename fails. The caller holds the signals."""
    if not target.exists():
        os.rename(staging, target)
        return None
    backup = Path(tempfile.mkdtemp(prefix=f".{target.name[:100]}.", suffix=".old.tmp", dir=target.parent))
    try:
        os.rename(target, backup)  # over the empty folder mkdtemp made
    except OSError:
        backup.rmdir()
        raise
    try:
        os.rename(staging, target)
    except OSError:
        os.rename(backup, target)
        raise
    return backup


def write_files(root: Path, files: list[PackageFile], force: bool, report: PackageReport, inputs: list[Path]) -> None:
    """Build the package of ``files`` beside ``root`` and rename it into place (see the module docstring)."""
    target = _target(root, force)
    if target.is_dir():
        check_carriable(target)
    plan = sort_files(target, files, force, report)
    for name in report.removed:
        for source in inputs:
            with contextlib.suppress(OSError):
                if os.path.samefile(target / name, source):
                    raise ToolkitError(
                        f"{os.fspath(source)!r} is an input of this run and a file of the earlier package in "
                        f"{os.fspath(root)!r} that this one no longer has; package into another --out"
                    )
    cwd = os.getcwd()
    staging, made = _staging_folder(target, root)
    committed = False
    backup: Path | None = None
    try:
        emptied = _carry_over(target, staging, plan.leave_out) if target.is_dir() else []
        for item, _sha in plan.write:
            _write_into(staging, item, root)
        _prune(staging, emptied)
        _write_into(staging, PackageFile(MANIFEST, _manifest_text({i.path: sha for i, sha in plan.write})), root)
        with signals_deferred():
            backup = _swap_in(staging, target)
            committed = True
    except OSError as err:
        raise ToolkitError(
            f"cannot put the package in place at {os.fspath(root)!r}: {err.strerror or err}; nothing was changed"
        ) from None
    finally:
        if not committed:
            shutil.rmtree(staging, ignore_errors=True)
            for folder in made:
                with contextlib.suppress(OSError):
                    folder.rmdir()
        if backup is not None:
            shutil.rmtree(backup, ignore_errors=True)  # links in it are removed, never followed
    if cwd == os.fspath(target) or cwd.startswith(os.fspath(target) + os.sep):
        os.chdir(cwd if os.path.isdir(cwd) else target)  # the working folder was the earlier package's


def write_package(
    source: DeploySource,
    out_dir: str | os.PathLike[str] | None = None,
    name: str | None = None,
    labels: list[str] | None = None,
    plugin_lib: str | None = None,
    ds_batch_size: int = 1,
    force: bool = False,
    inputs: list[Path] | None = None,
) -> PackageReport:
    """Plan and write the package of ``source``; returns what was written, kept and removed."""
    root = Path(out_dir) if out_dir else default_package_dir(source.model)
    name = check_name(name) if name is not None else default_name(source.model.stem)
    check_labels(labels, source.meta.num_classes)
    if ds_batch_size < 1:
        raise ToolkitError(f"--ds-batch-size {ds_batch_size} must be >= 1")
    limit = source.max_batch or source.meta.batch
    if ds_batch_size > limit:
        raise ToolkitError(
            f"--ds-batch-size {ds_batch_size} exceeds the model's largest batch {limit}; lower it"
            + (" or raise --max-batch" if source.kind == KIND_ONNX and source.max_batch else "")
        )
    if plugin_lib and not source.uses_plugin:
        raise ToolkitError("--plugin-lib is for graphs that use the IdleScatter plugin, and this one does not; drop it")
    mode = network_mode(source.precision)
    built_from = source.engine.built_from if source.engine else None
    built_from_name = None
    if built_from is not None and built_from != source.graph:
        built_from_name = built_from.name
        if built_from_name == source.graph.name:  # two graphs of one name: the parsed one gets its own
            built_from_name = f"{built_from.stem}_built{built_from.suffix}"
    layout = package_layout(
        source.kind,
        name,
        source.precision,
        source.graph.name,
        engine_name=source.model.name,
        plugin=source.uses_plugin,
        deepstream=mode.value is not None,
        built_from_name=built_from_name,
    )
    names = labels or [f"class_{i}" for i in range(source.meta.num_classes)]
    labels_note = "" if labels else "Class names are placeholders (`class_<i>`); pass --labels FILE for real ones."
    files = plan_files(source, layout, names, plugin_lib, ds_batch_size, labels_note)
    report = PackageReport(root, source, layout)
    if layout.deepstream_config:
        pre = preprocessing(source.meta)
        if not pre.exact:
            report.notes.append(pre.note())
    elif layout.kind != KIND_RTX:
        report.notes.append(f"no DeepStream config: {mode.why}")
    if labels_note:
        report.notes.append(labels_note)
    sources = [source.model, source.graph, *source.plugins, *(inputs or [])]
    sources += [f.copy_of for f in files if f.copy_of is not None]
    if source.engine:
        sources.append(source.engine.sidecar)
    refuse_overwriting_inputs([root / f.path for f in files] + [root / MANIFEST], sources)
    write_files(root, files, force, report, sources)
    return report


def make_package(
    model: str | os.PathLike[str] | None = None,
    *,
    source_onnx: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] | None = None,
    name: str | None = None,
    labels_file: str | os.PathLike[str] | None = None,
    max_batch: int = 32,
    precision: str | None = None,
    plugin_lib: str | None = None,
    ds_batch_size: int = 1,
    force: bool = False,
) -> PackageReport:
    """``python -m engines.package`` as a library call: read the model (default: the last export), write its package."""
    if name is not None:
        check_name(name)
    labels = read_labels(labels_file)
    source = read_source(model, source_onnx, max_batch, precision)
    inputs = [Path(labels_file)] if labels_file else []
    return write_package(source, out, name, labels, plugin_lib, ds_batch_size, force, inputs)
