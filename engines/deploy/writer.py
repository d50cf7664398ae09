"""The package on disk: every file planned first, then written atomically, never over an edit.

A package folder holds a manifest (``.idlevit-package.json``: the path and sha256 of every file
the package wrote). A non-empty folder is refused unless ``force``; with ``force`` a file is
replaced only when the manifest lists it and its bytes are still the ones written (anything
else is hand-edited or foreign, and kept), and files of the earlier package that this one no
longer has are removed on the same terms. The manifest is rewritten before every file, naming
both the old and the new sha256 while the file is replaced, so an interrupted run leaves a
folder the next run still reads right. Nothing is written until every file's content is known,
and no output may be one of the inputs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import idlevit
from idlevit.errors import ToolkitError
from idlevit.fileio import atomic_write, refuse_overwriting_inputs, sha256_file, signals_deferred

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
    together: str = ""  # files with the same tag appear together (an engine and its sidecar)

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
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ToolkitError(f"package manifest {where!r} is unreadable ({err}); {fix}") from None
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict):
        raise ToolkitError(f"package manifest {where!r} has no files object; {fix}")
    manifest: dict[str, list[str]] = {}
    for name, sha in files.items():
        shas = [sha] if isinstance(sha, str) else sha
        if not _safe_relative(name) or not isinstance(shas, list) or not all(isinstance(s, str) for s in shas):
            raise ToolkitError(f"package manifest {where!r} has a bad entry {name!r}; {fix}")
        manifest[name] = shas
    return manifest


def _write_manifest(root: Path, files: dict[str, list[str]]) -> None:
    data = {
        "format": MANIFEST_FORMAT,
        "written_by": "python -m engines.package",
        "toolkit_version": idlevit.__version__,
        "files": {name: shas[0] if len(shas) == 1 else shas for name, shas in sorted(files.items())},
    }
    with atomic_write(root / MANIFEST, "w") as handle:
        json.dump(data, handle, indent=2)
        handle.write("\n")


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
            PackageFile(layout.engine, copy_of=source.model, together="engine"),
            PackageFile(layout.engine_sidecar, copy_of=source.engine.sidecar, together="engine"),
            PackageFile(layout.onnx, copy_of=source.graph),
            PackageFile(layout.labels, per_line),
        ]
    else:
        assert layout.triton_config and layout.triton_model and layout.triton_labels
        files += [
            PackageFile(layout.triton_model, copy_of=source.model),
            PackageFile(layout.triton_config, triton_config_text(source, layout)),
            PackageFile(layout.triton_labels, per_line),
        ]
        if layout.deepstream_config and layout.deepstream_labels:
            files += [
                PackageFile(layout.deepstream_config, deepstream_config(source, layout, plugin_lib, ds_batch_size)),
                PackageFile(layout.deepstream_labels, label_line(labels)),
            ]
        if layout.onnx != layout.triton_model:  # an engine: the ONNX travels along for device builds
            files.append(PackageFile(layout.onnx, copy_of=source.graph))
        if layout.plugin_sources:
            files += _plugin_sources(layout)
    files.append(PackageFile(GUIDE, deploy_markdown(source, layout, labels_note)))
    seen: set[str] = set()
    for f in files:
        if f.path in seen or f.path == MANIFEST:
            raise ToolkitError(f"two files of the package would be {f.path}; rename the model file")
        seen.add(f.path)
    return files


# ---- on disk ----------------------------------------------------------------------------------
def default_package_dir(model: Path) -> Path:
    return model.with_name(f"{model.stem}_deploy")


def _prepare_root(root: Path, force: bool) -> None:
    where = os.fspath(root)
    if root.exists() and not root.is_dir():
        raise ToolkitError(f"package folder {where!r} is a file; choose another --out")
    if root.is_dir() and not force:
        entries = sorted(p.name for p in root.iterdir())
        if entries:
            shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
            raise ToolkitError(
                f"package folder {where!r} is not empty ({shown}); pass --force to replace the files an earlier "
                "package wrote there (edited and foreign files are kept), or choose another --out"
            )
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ToolkitError(
            f"cannot create package folder {where!r}: {err.strerror or err}; choose a writable --out"
        ) from None
    if not os.access(root, os.W_OK | os.X_OK):
        raise ToolkitError(f"package folder {where!r} is not writable; choose a writable --out")


def _ours(target: Path, shas: list[str] | None) -> bool:
    """The file is one the earlier package wrote, unchanged since."""
    return shas is not None and target.is_file() and not target.is_symlink() and sha256_file(target) in shas


def _copy(src: Path, dst: Path) -> None:
    with open(src, "rb") as reader, atomic_write(dst) as writer:
        while chunk := reader.read(1 << 20):
            writer.write(chunk)


def _write_file(root: Path, item: PackageFile) -> None:
    target = root / item.path
    if item.copy_of is not None:
        _copy(item.copy_of, target)
    else:
        with atomic_write(target) as handle:
            handle.write((item.text or "").encode("utf-8"))


def _remove_empty_dirs(root: Path, path: Path) -> None:
    folder = path.parent
    while folder != root and root in folder.parents:
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent


def write_files(root: Path, files: list[PackageFile], force: bool, report: PackageReport) -> None:
    """Write ``files`` under ``root`` (prepared), keeping edited and foreign files; fills ``report``."""
    old = read_manifest(root) if force else {}
    manifest: dict[str, list[str]] = {}
    todo: list[tuple[PackageFile, str]] = []
    inside = root.resolve()
    for item in files:
        target = root / item.path
        if not target.resolve().is_relative_to(inside):  # a linked folder would lead the write elsewhere
            report.kept_foreign.append(item.path)
            continue
        if not target.exists() and not target.is_symlink():
            report.written.append(item.path)
        elif _ours(target, old.get(item.path)):
            report.replaced.append(item.path)
            manifest[item.path] = list(old[item.path])
        else:
            (report.kept_edited if item.path in old else report.kept_foreign).append(item.path)
            continue
        todo.append((item, item.sha256()))
    planned = {item.path for item in files}
    stale = []
    for name, shas in old.items():
        if name in planned or not (root / name).exists():
            continue
        if _ours(root / name, shas):
            stale.append(name)
            manifest[name] = shas
        else:
            report.kept_edited.append(name)
    groups: dict[str, list[tuple[PackageFile, str]]] = {}
    for item, sha in todo:
        groups.setdefault(item.together or item.path, []).append((item, sha))
    for group in groups.values():
        for item, sha in group:  # the manifest names the new bytes before they land, and the old ones until the end
            manifest[item.path] = [sha, *manifest.get(item.path, [])]
        _write_manifest(root, manifest)
        with signals_deferred() if len(group) > 1 else contextlib.nullcontext():
            for item, _ in group:
                _write_file(root, item)
    for name in stale:
        target = root / name
        try:
            target.unlink()
        except OSError as err:
            raise ToolkitError(
                f"cannot remove {os.fspath(target)!r}: {err.strerror or err}; remove it by hand"
            ) from None
        _remove_empty_dirs(root, target)
        report.removed.append(name)
        del manifest[name]
    _write_manifest(root, {name: shas[:1] for name, shas in manifest.items()})


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
    layout = package_layout(
        source.kind,
        name,
        source.precision,
        source.graph.name,
        engine_name=source.model.name,
        plugin=source.uses_plugin,
        deepstream=mode.value is not None,
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
    if source.engine:
        sources.append(source.engine.sidecar)
    refuse_overwriting_inputs([root / f.path for f in files] + [root / MANIFEST], sources)
    _prepare_root(root, force)
    write_files(root, files, force, report)
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
