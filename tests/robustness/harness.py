"""How a fault case runs and what it must leave: a command in a scratch folder, judged from the outside.

A :class:`Case` prepares files in an empty scratch folder, runs ``python -m <module> <args>`` there
(``PYTHONPATH`` = this checkout, optionally with a fault injected, see ``faults/sitecustomize.py``)
and asserts what the README promises for every command:

* the documented exit code (0 done, 1 check failed, 2 bad input, 3 missing dependency,
  4 TensorRT build failed, 70 internal error, 130/143 interrupted);
* exactly one line on stderr (``error: ...``; ``warning: ...`` for a success with something to
  say; none for a clean success), and no ``Traceback`` anywhere;
* every file that was there before is still there with the same sha256 (inputs are never
  modified), the bundled demo checkpoint included;
* nothing new but the outputs the case allows: no temporary (``*.tmp``) or partial file, no
  folder made for an output that was never written.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest

from idlevit.checkpoint import DEMO_CHECKPOINT
from idlevit.fileio import sha256_file
from idlevit.metadata import read_metadata

ROOT = Path(__file__).resolve().parents[2]
FAULTS = Path(__file__).resolve().parent / "faults"


@dataclass(frozen=True)
class Assets:
    """Files every case may copy into its scratch folder (made once per test session and worker)."""

    onnx: Path  # the bundled demo exported with --no-verify (dynamic batch, no index outputs)
    ckpt: Path  # a copy of the bundled demo checkpoint
    digit: Any  # a real digits test scan at 32 px, 8-bit grey (numpy uint8, 32 x 32)


def make_assets(folder: Path) -> Assets:
    """The files cases copy (see :class:`Assets`), made in ``folder`` and left read-only: a case that writes onto
    one fails loudly, here too."""
    import numpy as np  # lazy: the exporter and the digits load only where assets are made

    from export.exporter import export_checkpoint
    from idlevit.data import digits_split

    onnx = folder / "demo.onnx"
    export_checkpoint("demo", out=onnx, verify=False, progress=False, exporter="torchscript")
    ckpt = folder / "demo.pth"
    shutil.copyfile(DEMO_CHECKPOINT, ckpt)
    images, _ = digits_split("test", 32)
    digit = np.round(images[0, 0].numpy() * 255).astype(np.uint8)
    for path in (onnx, ckpt):
        path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    return Assets(onnx=onnx, ckpt=ckpt, digit=digit)


#: A :func:`fake_engine` change that leaves the field out of the sidecar.
DROP = object()


def fake_engine(name: str, raw: str | None = None, **changes: object) -> Callable[[Path, Assets], None]:
    """An engine file and its sidecar as export.trt writes them (the engine's bytes are a stand-in: every
    case is refused at the sidecar, before an engine is deserialised), built from ``demo.onnx``; a change
    of ``DROP`` leaves that field out."""

    def make(scratch: Path, assets: Assets) -> None:
        onnx_path = scratch / "demo.onnx"
        if not onnx_path.exists():
            shutil.copyfile(assets.onnx, onnx_path)
        digest = sha256_file(onnx_path)
        (scratch / name).write_bytes(b"serialized engine")
        sidecar = dict(
            engine=name,
            engine_sha256=sha256_file(scratch / name),
            runtime="tensorrt",
            runtime_version="10.3.0",
            gpu=None,
            compute_capabilities=["8.7"],
            precision_plan={"precision": "fp32"},
            profiles=[{"images": {"min": [1, 3, 32, 32], "opt": [8, 3, 32, 32], "max": [32, 3, 32, 32]}}],
            builder={},
            plugins=[],
            onnx="demo.onnx",
            onnx_sha256=digest,
            source_onnx="demo.onnx",
            source_onnx_sha256=digest,
            idlevit=asdict(read_metadata(onnx_path)),
            format=1,
        )
        sidecar.update(changes)
        for key in [k for k, v in changes.items() if v is DROP]:
            del sidecar[key]
        (scratch / (name + ".json")).write_text(raw if raw is not None else json.dumps(sidecar))

    return make


@dataclass(frozen=True)
class Case:
    """One fault: what to prepare, what to run, and the outcome the README documents."""

    name: str
    module: str
    args: tuple[str, ...]
    code: int
    says: str = ""  # text the stderr line must hold
    make: Callable[[Path, Assets], None] | None = None
    outputs: tuple[str, ...] = ()  # glob patterns (relative to scratch) of new files a case may leave
    rewrites: tuple[str, ...] = ()  # glob patterns of files there before that a case may rewrite (its outputs)
    stderr_lines: int = 1
    fault: dict[str, str] | None = None  # ROBUSTNESS_FAULT for faults/sitecustomize.py; "{scratch}" is filled in
    fsize: int | None = None  # RLIMIT_FSIZE of the command, bytes
    env: dict[str, str] = field(default_factory=dict)
    timeout: int = 300


def param(case: Case) -> Any:
    return pytest.param(case, id=case.name)


def command_env(fault: dict[str, str] | None = None, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a command: this checkout first on the path, no state from the caller, one thread.

    ``TORCHINDUCTOR_CACHE_DIR`` is state too: importing torch in this process sets it (to a folder under the
    temporary folder), and a command that inherits it never looks for a temporary folder itself."""
    caller = ("IDLEVIT_", "ROBUSTNESS_", "PYTHON", "TORCHINDUCTOR_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(caller)}
    paths = [str(ROOT)]
    if fault:
        paths.insert(0, str(FAULTS))
        env["ROBUSTNESS_FAULT"] = json.dumps(fault)
    env.update(PYTHONPATH=os.pathsep.join(paths), PYTHONDONTWRITEBYTECODE="1", OMP_NUM_THREADS="1")
    env.update(extra or {})
    return env


def preexec(fsize: int | None = None) -> Callable[[], None]:
    """In the child before exec: Ctrl-C as in a terminal (Python installs its handler only over SIG_DFL),
    and a real file-size limit when asked (Python ignores SIGXFSZ, so writes fail with EFBIG)."""

    def setup() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    return setup


def popen(module: str, args: list[str], cwd: Path, **kwargs: Any) -> subprocess.Popen[str]:
    """Start ``python -m module args`` in ``cwd`` (for signals sent from outside)."""
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=command_env(kwargs.pop("fault", None), kwargs.pop("env", None)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=preexec(kwargs.pop("fsize", None)),
        **kwargs,
    )


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(folder: Path) -> dict[str, str]:
    """Every entry under ``folder`` (hidden ones included): file -> sha256, link -> its target, folder -> "dir"."""
    entries: dict[str, str] = {}
    for base, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(base) / name
            rel = os.fspath(path.relative_to(folder))
            if path.is_symlink():
                entries[rel] = "link -> " + os.readlink(path)
            elif path.is_dir():
                entries[rel] = "dir"
            elif path.is_file():
                entries[rel] = sha256(path)
            else:
                entries[rel] = "special"
    return entries


DEMO_SHA256 = sha256(DEMO_CHECKPOINT)


def one_line(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def check_outcome(
    result: subprocess.CompletedProcess[str] | tuple[int, str, str],
    case: Case,
    before: dict[str, str],
    scratch: Path,
) -> None:
    """The README's promises for one run (see the module docstring)."""
    code, stdout, stderr = (
        (result.returncode, result.stdout, result.stderr) if isinstance(result, subprocess.CompletedProcess) else result
    )
    shown = f"exit {code}\n--- stdout\n{stdout[-3000:]}\n--- stderr\n{stderr[-3000:]}"
    assert code == case.code, shown
    assert "Traceback" not in stderr and "Traceback" not in stdout, shown
    lines = one_line(stderr)
    assert len(lines) == case.stderr_lines, shown
    if lines:
        prefix = "warning: " if code == 0 else "error: "
        assert lines[0].startswith(prefix), shown
        assert case.says in lines[0], f"expected {case.says!r} in the error line\n{shown}"
        assert len(lines[0]) <= 800, f"an error line of {len(lines[0])} characters"
    after = snapshot(scratch)
    for rel, digest in before.items():
        if any(fnmatch(rel, pattern) for pattern in case.rewrites) and rel in after:
            continue
        assert after.get(rel) == digest, f"input {rel} was changed or removed ({digest} -> {after.get(rel)})\n{shown}"
    new = sorted(set(after) - set(before))
    assert not [rel for rel in new if rel.endswith(".tmp")], f"temporary files left: {new}\n{shown}"
    allowed = [rel for rel in new if any(fnmatch(rel, pattern) for pattern in case.outputs)]
    assert new == allowed, f"files left that the case does not allow: {sorted(set(new) - set(allowed))}\n{shown}"
    assert sha256(DEMO_CHECKPOINT) == DEMO_SHA256, "the bundled demo checkpoint changed"


def run_case(case: Case, scratch: Path, assets: Assets) -> subprocess.CompletedProcess[str]:
    """Prepare, run and judge one case; returns the finished process for further checks."""
    if case.make is not None:
        case.make(scratch, assets)
    before = snapshot(scratch)
    fault = {k: v.format(scratch=scratch) for k, v in case.fault.items()} if case.fault else None
    result = subprocess.run(
        [sys.executable, "-m", case.module, *case.args],
        cwd=scratch,
        env=command_env(fault, case.env),
        capture_output=True,
        text=True,
        timeout=case.timeout,
        preexec_fn=preexec(case.fsize),
    )
    check_outcome(result, case, before, scratch)
    return result


def run_signalled(
    module: str,
    args: list[str],
    scratch: Path,
    fault: dict[str, str],
    marker: Path,
    signum: int,
    code: int,
    settle: float = 0.5,
) -> None:
    """Run ``python -m module args`` with a fault that creates ``marker`` at a chosen moment, send ``signum`` from
    outside ``settle`` seconds after it appears, and judge the outcome: ``code``, the signal's one line, inputs
    as they were, nothing left behind."""
    before = snapshot(scratch)
    process = popen(module, args, scratch, fault=fault)
    deadline = time.monotonic() + 240
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(settle)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=300)
    says = "terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted (Ctrl-C)"
    check_outcome(
        (process.returncode, stdout, stderr), Case("signalled", module, tuple(args), code, says), before, scratch
    )
