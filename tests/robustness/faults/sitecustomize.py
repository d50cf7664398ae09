"""Fault injection for the robustness suite: loaded by a command's interpreter when this folder is on PYTHONPATH.

``ROBUSTNESS_FAULT`` (JSON) says which fault; without it nothing changes. Faults:

* ``{"raise_in": "module:function"}``: the function raises ``RuntimeError`` (an unexpected bug, exit 70).
* ``{"signal_at_fsync": "SIGTERM"}``: a real signal, sent by the process to itself while it writes a
  temporary output (just before ``os.fsync`` of a ``*.tmp`` file, or of a file in a ``*.tmp`` folder),
  so it lands in the middle of a write.
* ``{"oserror_at_fsync": "ENOSPC"}``: ``os.fsync`` of such a file fails with that errno (a full disk,
  faked: a small full file system needs root to mount).
* ``{"erofs_under": "/path"}``: creating a temporary file under that folder fails with ``EROFS`` (a
  read-only file system, faked for root, whom chmod does not stop).
* ``{"perturb_outputs": "0.05"}``: ONNX Runtime's ``InferenceSession.run`` adds that much to its
  first output (the logits): a graph that disagrees with PyTorch.
* ``{"mark_call": "module:function", "marker": "/path"}``: the file ``marker`` is created when the
  function is first called, so a test can send a signal while real work runs.
* ``{"pause_after_import": "module", "marker": "/path"}``: once the command's own imports have
  imported ``module``, the file ``marker`` is created and the import pauses (up to 60 s), so a
  test can send a signal while the command is still being imported.
"""

from __future__ import annotations

import errno
import importlib
import importlib.abc
import importlib.util
import json
import os
import signal
import sys
import tempfile
import time


def _temporary(fd: int) -> bool:
    """A temporary output: a ``*.tmp`` file, or a file inside a ``*.tmp`` folder (a package being built)."""
    try:
        path = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return False
    return path.endswith(".tmp") or ".tmp/" in path


def _patch(target: str, make) -> None:
    module_name, name = target.split(":")
    module = importlib.import_module(module_name)
    setattr(module, name, make(getattr(module, name)))


def _install(fault: dict) -> None:
    if "raise_in" in fault:

        def raising(original):
            def broken(*args, **kwargs):
                raise RuntimeError(f"injected fault in {fault['raise_in']}")

            return broken

        _patch(fault["raise_in"], raising)
    if "signal_at_fsync" in fault or "oserror_at_fsync" in fault:
        real_fsync = os.fsync

        def fsync(fd: int) -> None:
            if _temporary(fd):
                if "oserror_at_fsync" in fault:
                    code = getattr(errno, fault["oserror_at_fsync"])
                    raise OSError(code, os.strerror(code))
                os.kill(os.getpid(), getattr(signal, fault["signal_at_fsync"]))
            real_fsync(fd)

        os.fsync = fsync
    if "erofs_under" in fault:
        real_mkstemp = tempfile.mkstemp
        root = os.path.realpath(fault["erofs_under"])

        def mkstemp(*args, **kwargs):
            folder = os.path.realpath(kwargs.get("dir") or (args[2] if len(args) > 2 else tempfile.gettempdir()))
            if folder == root or folder.startswith(root + os.sep):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS))
            return real_mkstemp(*args, **kwargs)

        tempfile.mkstemp = mkstemp
    if "perturb_outputs" in fault:
        import onnxruntime

        real_run = onnxruntime.InferenceSession.run
        shift = float(fault["perturb_outputs"])

        def run(self, *args, **kwargs):
            outputs = real_run(self, *args, **kwargs)
            return [outputs[0] + shift, *outputs[1:]]

        onnxruntime.InferenceSession.run = run
    if "mark_call" in fault:

        def marking(original):
            def marked(*args, **kwargs):
                with open(fault["marker"], "w"):
                    pass
                return original(*args, **kwargs)

            return marked

        _patch(fault["mark_call"], marking)


class _PauseAfterImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself; wraps the real loader of one module so that its import ends in a pause."""

    def __init__(self, name: str, marker: str) -> None:
        self.name, self.marker = name, marker

    def find_spec(self, fullname, path, target=None):  # noqa: ANN001, ANN201
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        real_exec = spec.loader.exec_module

        def exec_module(module) -> None:  # noqa: ANN001
            real_exec(module)
            with open(self.marker, "w"):
                pass
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                time.sleep(0.05)

        spec.loader.exec_module = exec_module
        return spec


def _install_import_pause(fault: dict) -> None:
    if "pause_after_import" in fault:
        sys.meta_path.insert(0, _PauseAfterImport(fault["pause_after_import"], fault["marker"]))


if os.environ.get("ROBUSTNESS_FAULT"):
    _install_import_pause(json.loads(os.environ["ROBUSTNESS_FAULT"]))
    _install(json.loads(os.environ["ROBUSTNESS_FAULT"]))
