"""Known failures of the libraries under the toolkit, as the one line a user can act on.

torch, NumPy, onnx, ONNX Runtime, Polygraphy and the file system raise their own exceptions for
problems of the machine or of the input (not enough memory for the asked batch or image size, a
full disk, a file-size limit, no usable temporary folder, a graph ONNX Runtime cannot load).
:func:`known_failure` recognises them by type name, errno and message, without importing any of
those libraries, so that :func:`idlevit.cli.run_cli` ends them with exit 2 and a fix instead of
"internal error, please report it"; a missing package of the PyTorch side on a device install ends
with exit 3 and its install line. Anything it does not recognise stays an internal error.
"""

from __future__ import annotations

import errno
import os
import re

from .errors import ToolkitError, as_missing_dependency, shown

#: Messages of an allocation that cannot succeed: torch's CPU allocator, NumPy, ONNX Runtime, C++.
_NO_MEMORY = re.compile(
    r"can't allocate memory|DefaultCPUAllocator|Unable to allocate|Failed to allocate memory|bad_alloc|"
    r"out of memory|array is too big|Maximum allowed dimension exceeded|Cannot allocate memory",
    re.IGNORECASE,
)
_NO_TEMPORARY_FOLDER = "No usable temporary directory"
#: errno -> (what went wrong, how to fix it) for writes the machine refuses.
_WRITE_ERRNOS = {
    errno.ENOSPC: "free some space or choose another output folder (TMPDIR for temporary files)",
    errno.EDQUOT: "free some space within your quota or choose another output folder",
    errno.EFBIG: "raise the file-size limit (`ulimit -f`) or choose another output folder",
    errno.EROFS: "choose a writable output folder (TMPDIR for temporary files)",
    errno.EACCES: "check the permissions, or choose another path",
    errno.EPERM: "check the permissions, or choose another path",
    errno.ENAMETOOLONG: "use shorter file and folder names",
    errno.EMFILE: "raise the open-file limit (`ulimit -n`)",
    errno.ENFILE: "close other programs or raise the system's open-file limit",
}
#: ONNX Runtime's exception classes (onnxruntime.capi.onnxruntime_pybind11_state) that mean "this graph or
#: this input cannot run here", not a bug of the caller.
_ONNXRUNTIME_REFUSALS = {"InvalidProtobuf", "InvalidGraph", "NoSuchFile", "NotImplemented", "Fail", "InvalidArgument"}
#: onnx's and protobuf's refusals of a file's bytes or graph.
_ONNX_REFUSALS = {"ValidationError", "InferenceError", "DecodeError"}


def _text(err: BaseException) -> str:
    return " ".join(str(err).split())


def _no_memory(err: BaseException) -> ToolkitError:
    return ToolkitError(
        f"not enough memory for this run ({shown(_text(err), 160)}); lower the batch size or the image size "
        "(--batch, --batch-sizes, --img-size), or free memory"
    )


def _one(err: BaseException) -> ToolkitError | None:
    missing = as_missing_dependency(err)  # torch, torchvision or timm absent (a device install): exit 3
    if missing is not None:
        return missing
    kind, module = type(err).__name__, type(err).__module__
    text = _text(err)
    if isinstance(err, MemoryError) or kind == "OutOfMemoryError" or _NO_MEMORY.search(text):
        return _no_memory(err)
    if isinstance(err, OSError):
        if _NO_TEMPORARY_FOLDER in text:
            return ToolkitError(
                "no usable temporary folder: every candidate refused a test file (a full disk, a read-only /tmp "
                "or a file-size limit); set TMPDIR to a writable folder with space, or raise `ulimit -f`"
            )
        if err.errno == errno.ENOMEM:
            return _no_memory(err)
        if err.errno in _WRITE_ERRNOS:
            name = f" {shown(os.fspath(err.filename), 120)}" if err.filename is not None else ""
            reason = err.strerror or os.strerror(err.errno)
            return ToolkitError(f"the system refused a file operation{name}: {reason}; {_WRITE_ERRNOS[err.errno]}")
        return None
    if module.startswith("onnxruntime") and kind in _ONNXRUNTIME_REFUSALS:
        return ToolkitError(
            f"ONNX Runtime cannot run the graph ({shown(text, 200)}); export it again with `python -m export.onnx`, "
            "or check that its external data files are beside it"
        )
    if kind in _ONNX_REFUSALS and module.startswith(("onnx", "google.protobuf")):
        return ToolkitError(
            f"the ONNX file is not a valid graph ({kind}: {shown(text, 200)}); export it again with "
            "`python -m export.onnx`"
        )
    return None


def known_failure(err: BaseException) -> ToolkitError | None:
    """The one-line error for ``err`` (or an exception it was raised from) when it is a known failure of the
    machine or the input, else None."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen and len(seen) < 8:
        seen.add(id(current))
        found = _one(current)
        if found is not None:
            return found
        current = current.__cause__ or current.__context__
    return None
