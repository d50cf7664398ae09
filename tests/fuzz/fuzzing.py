"""How a fuzzed run is made, run in-process and judged.

* Seeds and sizes: one fixed seed (``IDLEVIT_FUZZ_SEED``, default :data:`DEFAULT_SEED`) and a small example
  count (``IDLEVIT_FUZZ_EXAMPLES``, default :data:`DEFAULT_EXAMPLES`) per test, so CI is short and a failure
  reproduces; :func:`fuzz` applies both, and the session ends with a ``fuzz: <test> seed=<s> examples=<n>`` line
  per test (``conftest.py``).
* Flags come from each command's own argparse parser (:func:`argv_for`): a new flag is fuzzed as soon as it
  exists, by its type (integers, floats with nan/inf/huge/negative, choices, lists) or, for text, by what its
  name says it holds (a model, a checkpoint, an output, a dataset; odd and escaping paths included).
* A run is the command's ``main`` under :func:`idlevit.cli.run_cli`, in this process, in a scratch folder of its
  own (:func:`run_in_process`); where a command would start real work (export, training, timing, a parity
  run) the work function is replaced by one that stops the run (:data:`WORK`): what a fuzzed flag must meet is
  already met there (every number that reaches the work is finite and in range, see :func:`check_reached`).
* Every run is judged as the fault suite judges a command (:func:`check_run`): a documented exit code (never 70),
  exactly one ``error:`` line on failure, no traceback, inputs byte for byte as they were, nothing left behind.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import io
import json
import math
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import HealthCheck, Phase, seed, settings
from hypothesis import strategies as st
from PIL import Image

from idlevit.cli import run_cli
from idlevit.errors import (
    EXIT_BAD_INPUT,
    EXIT_BUILD_FAILED,
    EXIT_CHECK_FAILED,
    EXIT_MISSING_DEPENDENCY,
    EXIT_OK,
)

from ..robustness.harness import Assets, fake_engine, snapshot

SEED_ENV, EXAMPLES_ENV = "IDLEVIT_FUZZ_SEED", "IDLEVIT_FUZZ_EXAMPLES"
DEFAULT_SEED, DEFAULT_EXAMPLES = 20260421, 40
#: What a command may end with (idlevit/errors.py), signals aside: never 70, the internal error.
DOCUMENTED = (EXIT_OK, EXIT_CHECK_FAILED, EXIT_BAD_INPUT, EXIT_MISSING_DEPENDENCY, EXIT_BUILD_FAILED)
#: The exit "code" of a run that got through every check and reached its work (see :data:`WORK`).
REACHED = "reached the work"


def fuzz_seed() -> int:
    return int(os.environ.get(SEED_ENV, DEFAULT_SEED))


def fuzz_examples(scale: float = 1.0) -> int:
    return max(1, round(int(os.environ.get(EXAMPLES_ENV, DEFAULT_EXAMPLES)) * scale))


def fuzz(scale: float = 1.0) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The seed and example count of a fuzz test (``scale``: this test's share of the example count)."""

    def apply(test: Callable[..., Any]) -> Callable[..., Any]:
        test._fuzz_examples = fuzz_examples(scale)  # type: ignore[attr-defined]  # read by conftest's summary
        configured = settings(
            max_examples=fuzz_examples(scale),
            deadline=None,
            database=None,
            phases=(Phase.explicit, Phase.generate, Phase.shrink),
            suppress_health_check=(HealthCheck.too_slow, HealthCheck.function_scoped_fixture),
            print_blob=True,
        )(test)
        return seed(fuzz_seed())(configured)

    return apply


# --- the scratch folder of one run ---------------------------------------------------------------

#: Files every run finds in its working folder (see :func:`prepare`).
ONNX, CKPT, ENGINE, IMAGE, LABELS, DATASET = "m.onnx", "m.pth", "e.engine", "x.png", "labels.txt", "ds"


def tidy(root: Path, before: dict[str, str]) -> None:
    """Remove what a run added under ``root`` (its outputs), so the next run finds the folder as :func:`prepare`
    left it (a run that changed an input fails its check first)."""
    after = snapshot(root)
    for rel in sorted(set(after) - set(before), key=len, reverse=True):
        path = root / rel
        if path.is_symlink() or not path.is_dir():
            path.unlink(missing_ok=True)
        else:
            shutil.rmtree(path, ignore_errors=True)


def prepare(root: Path, assets: Assets) -> Path:
    """A fresh working folder ``root/a/b/work`` (so ``../../x`` stays inside ``root``, where it is watched) with the
    demo ONNX, checkpoint, a fake engine and its sidecar, a digit image, labels and a tiny ImageFolder."""
    if root.exists():
        shutil.rmtree(root)
    work = root / "a" / "b" / "work"
    work.mkdir(parents=True)
    shutil.copyfile(assets.onnx, work / ONNX)
    shutil.copyfile(assets.ckpt, work / CKPT)
    fake_engine(ENGINE)(work, assets)
    Image.fromarray(np.stack([assets.digit] * 3, -1)).save(work / IMAGE)
    (work / LABELS).write_text("".join(f"digit {i}\n" for i in range(10)))
    for cls in ("0", "1"):
        (work / DATASET / "val" / cls).mkdir(parents=True)
        Image.fromarray(np.stack([assets.digit] * 3, -1)).save(work / DATASET / "val" / cls / "a.png")
    return work


# --- running a command in this process -----------------------------------------------------------


class Reached(BaseException):  # noqa: N818 - not an error: the run got through to its work
    """Raised by a stubbed work function (a BaseException: run_cli must not turn it into exit 70)."""

    def __init__(self, where: str, values: tuple[Any, ...]) -> None:
        super().__init__(where)
        self.where, self.values = where, values


#: The function each command's real work starts in: a fuzzed run stops there (the values it got are judged).
WORK = {
    "benchmarks.latency": ("benchmarks.harness", ("run_benchmark", "time_given")),
    "benchmarks.profile": ("benchmarks.op_profile", ("profile_onnx",)),
    "benchmarks.quantization": ("benchmarks.sweep", ("run_sweep",)),
    "engines.infer": ("engines.classify", ("classify",)),
    "export.onnx": ("export.exporter", ("export_checkpoint",)),
    "export.trt": ("export.engine", ("export_engine",)),
    "idlevit.finetune": ("idlevit.trainer", ("train",)),
    "validate.accuracy": ("validate.evaluate", ("measure_accuracy",)),
    "validate.parity": ("validate.judge", ("run_parity",)),
    "validate.parity ": ("validate.reduced", ("run_graph_parity",)),  # the second work function of parity
}
#: Commands that run for real in a fuzzed run: their work is quick (writing a package folder).
REAL = ("engines.package",)
COMMANDS = tuple(sorted({name.strip() for name in WORK} | set(REAL)))


@contextlib.contextmanager
def work_stubbed() -> Iterator[None]:
    """Every work function of :data:`WORK` replaced by one that raises :class:`Reached` with its arguments."""
    originals = []
    for module_name, functions in WORK.values():
        module = importlib.import_module(module_name)
        for function in functions:

            def stop(*args: Any, _where: str = f"{module_name}.{function}", **kwargs: Any) -> None:
                raise Reached(_where, (*args, *kwargs.values()))

            originals.append((module, function, getattr(module, function)))
            setattr(module, function, stop)
    try:
        yield
    finally:
        for module, function, original in originals:
            setattr(module, function, original)


@dataclasses.dataclass
class Run:
    command: str
    argv: list[str]
    code: int | str
    stdout: str
    stderr: str
    reached: Reached | None = None

    def shown(self) -> str:
        return (
            f"python -m {self.command} {' '.join(map(repr, self.argv))}\nexit {self.code}\n"
            f"--- stdout\n{self.stdout[-2000:]}\n--- stderr\n{self.stderr[-2000:]}"
        )


def run_in_process(command: str, argv: list[str], cwd: Path) -> Run:
    """``python -m command argv`` as run_cli runs it, in this process with ``cwd`` as the working folder."""
    main = importlib.import_module(command).main
    out, err = io.StringIO(), io.StringIO()
    previous = os.getcwd()
    state = os.environ.pop("IDLEVIT_STATE_DIR", None)
    os.chdir(cwd)
    reached: Reached | None = None
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                run_cli(main, argv)
            except SystemExit as stop:
                code: int | str = stop.code if isinstance(stop.code, int) else EXIT_OK
            except Reached as stop:
                code, reached = REACHED, stop
    finally:
        os.chdir(previous)
        if state is not None:
            os.environ["IDLEVIT_STATE_DIR"] = state
    return Run(command, argv, code, out.getvalue(), err.getvalue(), reached)


# --- what every run must leave -------------------------------------------------------------------

#: Largest integer a flag may hand to the work (a count, a size, a seed): anything larger is a typo.
MAX_INT = 2**31 - 1


def _numbers(value: Any, seen: set[int]) -> Iterator[tuple[str, Any]]:
    """Every int and float in ``value`` (through lists, dicts, dataclasses and Namespaces), with where it is."""
    if id(value) in seen:
        return
    seen.add(id(value))
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, (int, float)):
        yield "", value
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from ((f"[{i}]{path}", v) for path, v in _numbers(item, seen))
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from ((f"[{key!r}]{path}", v) for path, v in _numbers(item, seen))
    elif isinstance(value, argparse.Namespace):
        yield from _numbers(vars(value), seen)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for item in dataclasses.fields(value):
            yield from ((f".{item.name}{path}", v) for path, v in _numbers(getattr(value, item.name), seen))


def check_reached(reached: Reached, shown: str) -> None:
    """What got through to the work was checked on the way: every number finite, every integer in 0..MAX_INT."""
    for path, number in _numbers(reached.values, set()):
        if isinstance(number, float):
            assert math.isfinite(number), f"{reached.where} got {number} at {path}\n{shown}"
        else:
            assert 0 <= number <= MAX_INT, f"{reached.where} got {number} at {path}\n{shown}"


def check_run(run: Run, before: dict[str, str], root: Path, may_write: bool = True, rewrites: str = "\0") -> None:
    """The promises every command keeps (see the module docstring); ``may_write``: a run that succeeds may leave
    new files (its outputs); ``rewrites``: the folder (relative to ``root``) of an output the run may replace."""
    shown = run.shown()
    assert run.code == REACHED or run.code in DOCUMENTED, shown
    assert "Traceback" not in run.stderr and "Traceback" not in run.stdout, shown
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if not line.startswith("warning: ")]
    if run.code not in (EXIT_OK, REACHED):  # one error line, last (a warning about the flags may come before it)
        assert len(errors) == 1 and lines[-1] == errors[0] and errors[0].startswith("error: "), shown
    else:
        assert not errors, shown
    if run.reached is not None:
        check_reached(run.reached, shown)
    after = {rel: v for rel, v in snapshot(root).items() if not (rel + "/").startswith(rewrites + "/")}
    for rel, digest in before.items():
        if not (rel + "/").startswith(rewrites + "/"):
            assert after.get(rel) == digest, f"input {rel} was changed or removed\n{shown}"
    new = sorted(set(after) - set(before))
    assert not [rel for rel in new if rel.endswith(".tmp")], f"temporary files left: {new}\n{shown}"
    if run.code != EXIT_OK or not may_write:
        assert not new, f"a run that wrote nothing final left {new}\n{shown}"


# --- flags, derived from each command's parser ---------------------------------------------------

NUMBERS = ("0", "-1", "1", "2", "-0", "1e3", "nan", "inf", "-inf", "1e308", "-1e308", "1e-320", "0x10", "", " ", "1,")
INTS = st.one_of(
    st.integers(-3, 70),
    st.sampled_from([2**31, 2**63, 10**30, -(2**31), 65536, 65537, 4096, 4097, 1024, 1025]),
)
FLOATS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(-2, 2),
    st.sampled_from([0.0, 0.5, 0.7, 1.0, 1.5, -0.5, 1e30, -1e30, 5e-324]),
)
ODD_TEXT = st.one_of(
    st.sampled_from(["", " ", "-", "--", ",", ",,", "-1", "nan", "é", "a" * 300, "x\ny", "--help-me", "\t"]),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=12),
)
ESCAPING = ["../../escaped", "../../escaped.onnx", "/dev/null", "/dev/full", ".", "..", "/", "nested/missing/x"]
#: What a text flag holds, by the words in its name, and the paths and words it is fuzzed with.
PATHS = {
    "model": [ONNX, ENGINE, CKPT, IMAGE, "missing.onnx", "e.engine.json"],
    "onnx": [ONNX, ENGINE, CKPT, "missing.onnx", "m.onnx,m.onnx", LABELS],
    "engine": [ENGINE, ONNX, "missing.engine", "e.engine,e.engine"],
    "ckpt": [CKPT, "demo", ONNX, "missing.pth", IMAGE],
    "teacher": [CKPT, "demo", ONNX, "missing.pth"],
    "init": [CKPT, "demo", ONNX, "missing.pth"],
    "out": [ONNX, CKPT, IMAGE, ENGINE, "new_out", "new.onnx", "new.pth", "new.engine", "new/deep/x", "x.png/x"],
    "report": [ONNX, "r.json", "r.md", "r", "new/r.json", IMAGE],
    "data": ["digits", DATASET, "missing_ds", ONNX, IMAGE],
    "dataset": ["digits", DATASET, "missing_ds", ONNX],
    "labels": [LABELS, ONNX, "missing.txt", IMAGE],
    "images": [IMAGE, ONNX, "missing.png", LABELS, DATASET],
    "cache": ["cache.bin", ONNX, "missing/cache.bin"],
    "plugin": ["lib.so", ONNX, "missing.so", "../../../lib.so"],
    "name": ["m", "my-model.v1", "a b", "a/b", "..", "a" * 300, "_"],
}


def _kind(action: argparse.Action) -> str | None:
    """The :data:`PATHS` entry a text flag's dest names, if any."""
    words = action.dest.split("_")
    for key in PATHS:
        if key in words or action.dest.startswith(key):
            return key
    return None


def values_for(action: argparse.Action) -> st.SearchStrategy[str]:
    """One fuzzed value of ``action``, as text on a command line."""
    kind = getattr(action.type, "__name__", None) if action.type is not None else None
    if action.choices is not None:
        return st.one_of(st.sampled_from([str(c) for c in action.choices]), ODD_TEXT)
    if action.type is int:
        return st.one_of(INTS.map(str), st.sampled_from(NUMBERS))
    if action.type is float or kind in ("atol", "rtol", "min_cosine", "min_top1", "max_mismatch", "tie_rtol"):
        return st.one_of(FLOATS.map(repr), st.sampled_from(NUMBERS))
    if kind is not None and "batch" in kind:
        return st.lists(INTS.map(str), min_size=0, max_size=3).map(",".join) | st.sampled_from(NUMBERS)
    path = _kind(action)
    if path is not None:
        return st.one_of(st.sampled_from(PATHS[path] + ESCAPING), ODD_TEXT)
    if "sizes" in action.dest or "rates" in action.dest or "ratios" in action.dest or "layers" in action.dest:
        return st.lists(st.one_of(INTS.map(str), FLOATS.map(repr)), min_size=0, max_size=3).map(",".join)
    return ODD_TEXT


def tokens_for(action: argparse.Action) -> st.SearchStrategy[list[str]]:
    """The tokens of one use of ``action`` (its values; a list flag's in the old space-separated form too)."""
    if action.nargs == 0:
        return st.just([])
    if action.nargs in ("+", "*"):
        return st.lists(values_for(action), min_size=1, max_size=3)
    if isinstance(action.nargs, int):
        return st.lists(values_for(action), min_size=action.nargs, max_size=action.nargs)
    return values_for(action).map(lambda value: [value])


def options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]


def positionals(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if not a.option_strings]


@st.composite
def argv_for(draw: st.DrawFn, parser: argparse.ArgumentParser, base: tuple[str, ...] = ()) -> list[str]:
    """A command line of ``parser``: ``base``, then a few of its flags (some twice), then its positionals."""
    argv = list(base)
    flags = options(parser)
    for action in draw(st.lists(st.sampled_from(flags), max_size=4)):
        use = draw(tokens_for(action))
        flag = draw(st.sampled_from(action.option_strings))
        # a value that looks like a flag must be attached with '=' (argparse reads it as a flag otherwise)
        if len(use) == 1 and use[0].startswith("-") and flag.startswith("--"):
            argv.append(f"{flag}={use[0]}")
        else:
            argv += [flag, *use]
    for action in positionals(parser):
        if action.nargs in ("?", "*") and draw(st.booleans()):
            continue
        argv += draw(tokens_for(action))
    return argv


def parser_of(command: str) -> argparse.ArgumentParser:
    return importlib.import_module(command).build_parser()


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


# --- artefacts, mutated field by field -----------------------------------------------------------

ODD_VALUES = st.one_of(
    st.sampled_from(
        [
            None,
            "",
            " ",
            "nan",
            math.nan,
            math.inf,
            -math.inf,
            -1,
            0,
            1,
            10**30,
            -(10**30),
            2**63,
            0.5,
            1.5,
            -0.5,
            True,
            False,
            "../../escaped",
            "../victim.txt",
            "/etc/passwd",
            "a" * 5000,
            [],
            {},
            [1, 2],
            [-1],
            {"a": 1},
            "a\nb",
        ]
    ),
    st.integers(),
    st.floats(),
    st.text(max_size=8),
)


def json_paths(value: Any, prefix: tuple[Any, ...] = (), depth: int = 4) -> list[tuple[Any, ...]]:
    """Every place in a JSON value (dict keys, list items), containers included, down to ``depth``."""
    paths = [prefix] if prefix else []
    if depth == 0:
        return paths
    if isinstance(value, dict):
        for key, item in value.items():
            paths += json_paths(item, (*prefix, key), depth - 1)
    elif isinstance(value, list):
        for i, item in enumerate(value[:4]):
            paths += json_paths(item, (*prefix, i), depth - 1)
    return paths


@st.composite
def mutated(draw: st.DrawFn, value: Any) -> Any:
    """``value`` (JSON) with one field replaced by an odd value, or removed."""
    copy = json.loads(json.dumps(value))
    path = draw(st.sampled_from(json_paths(copy)))
    holder = copy
    for key in path[:-1]:
        holder = holder[key]
    if isinstance(holder, dict) and draw(st.booleans()) and draw(st.booleans()):
        del holder[path[-1]]
    else:
        holder[path[-1]] = draw(ODD_VALUES)
    return copy


def model_flag(command: str, path: str) -> list[str]:
    """How ``command`` is given a model file (its parser says which flags it has: --onnx / --engine, or --model)."""
    flags = {flag for action in options(parser_of(command)) for flag in action.option_strings}
    wanted = "--engine" if path.endswith(".engine") else "--onnx"
    if wanted in flags:
        return [wanted, path]
    return ["--model", path] if "--model" in flags else [path]
