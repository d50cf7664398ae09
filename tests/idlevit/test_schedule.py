"""Schedules: the published defaults (numbers from the paper's facts) and validation errors."""

from __future__ import annotations

import pytest

import idlevit
from idlevit.schedule import parse_layers, parse_ratios, resolve_schedule


def test_deit_small_default_keeps_published_token_counts() -> None:
    # IDLEVIT.md: r = 0.7 at 224 px gives 137, 137, 137, 96, 96, 96, 67, 67, 67 on layers 3..11.
    schedule = resolve_schedule(idlevit.get_arch("deit_small"), keep_rate=0.7)
    assert schedule.idle_layers == tuple(range(3, 12))
    assert schedule.keep_tokens(196) == (137, 137, 137, 96, 96, 96, 67, 67, 67)


@pytest.mark.parametrize(("arch", "layers", "group"), [("lvvit_s", range(4, 16), 4), ("lvvit_m", range(5, 20), 5)])
def test_lvvit_default_schedules(arch: str, layers: range, group: int) -> None:
    schedule = resolve_schedule(idlevit.get_arch(arch), keep_rate=0.7)
    assert schedule.idle_layers == tuple(layers)
    expected = [0.7] * group + [0.7**2] * group + [0.7**3] * group
    assert schedule.keep_ratios == pytest.approx(expected)


def test_explicit_lists_override_the_default() -> None:
    cfg = idlevit.get_arch("deit_small")
    schedule = resolve_schedule(cfg, idle_layers=[2, 5], keep_ratios=[0.5, 0.25])
    assert schedule.keep_tokens(cfg.num_tokens) == (98, 49)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"keep_rate": 0.0}, "outside (0, 1]"),
        ({"keep_rate": 1.5}, "outside (0, 1]"),
        ({"keep_ratios": [0.7, 1.2]}, "idle layers but 2 keep ratios"),
        ({"idle_layers": [3, 4], "keep_ratios": [0.7, 1.2]}, "outside (0, 1]"),
        ({"idle_layers": [3, 12], "keep_ratios": [0.7, 0.7]}, "outside the model's blocks 0..11"),
        ({"idle_layers": [5, 4], "keep_ratios": [0.7, 0.7]}, "strictly increasing"),
        ({"idle_layers": [3], "keep_ratios": [0.001]}, "keeps 0 of 196 tokens"),
    ],
)
def test_invalid_schedules_raise_a_clear_error(kwargs: dict, message: str) -> None:
    with pytest.raises(idlevit.ScheduleError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve_schedule(idlevit.get_arch("deit_small"), **kwargs)


def test_parsers() -> None:
    assert parse_layers("3..5,8") == [3, 4, 5, 8]
    assert parse_ratios("0.7, 0.49") == [0.7, 0.49]
    with pytest.raises(idlevit.ScheduleError, match="cannot read idle layers"):
        parse_layers("three")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no idle layers"),
        (" , ", "no idle layers"),
        ("5..3", "runs backwards"),
        ("3..", "cannot read idle layers"),
        ("0..100000000", "name 100000001 blocks, more than any model has"),
        ("9" * 5000, "cannot read idle layers"),
    ],
    ids=["empty", "commas", "descending", "open-range", "runaway-range", "huge-number"],
)
def test_layer_texts_that_are_refused(text: str, message: str) -> None:
    with pytest.raises(idlevit.ScheduleError, match=message) as info:
        parse_layers(text)
    assert len(str(info.value)) < 200  # the command's error line stays short


def test_runaway_ranges_are_measured_before_they_are_expanded() -> None:
    with pytest.raises(idlevit.ScheduleError, match="more than any model has"):
        parse_layers("0..10000000000000000000")  # expanding this would never end


@pytest.mark.parametrize("text", ["", ",", " "])
def test_empty_ratio_lists_are_refused(text: str) -> None:
    with pytest.raises(idlevit.ScheduleError, match="no keep ratios"):
        parse_ratios(text)


def test_long_invalid_lists_are_shown_short() -> None:
    with pytest.raises(idlevit.ScheduleError) as info:
        resolve_schedule(idlevit.get_arch("deit_small"), idle_layers=range(100, 1000), keep_ratios=[0.5] * 900)
    assert "(894 more)" in str(info.value) and len(str(info.value)) < 200


def test_the_demo_keeps_int_of_n_times_ratio_tokens() -> None:
    """k = int(N * ratio) (IDLEVIT.md), pinned on the bundled demo (32 px, 4 px patches: N = 64, r = 0.7), where a
    rounding rule differs (44.8, 31.36 and 21.95 round to 45, 31 and 22): the schedule, the model loaded from
    the checkpoint and its reference forward all keep 44, 44, 44, 31, 31, 31, 21, 21, 21 image tokens."""
    import torch

    n = (32 // 4) ** 2
    ratios = [0.7] * 3 + [0.7 * 0.7] * 3 + [0.7 * 0.7 * 0.7] * 3
    truncated = [int(n * ratio) for ratio in ratios]
    assert truncated == [44, 44, 44, 31, 31, 31, 21, 21, 21]
    assert [round(n * ratio) for ratio in ratios] != truncated  # this test tells truncation from rounding
    model = idlevit.load_checkpoint("demo")
    assert model.cfg.num_tokens == n
    assert list(model.schedule.keep_tokens(n)) == truncated == list(model.idle_plan.values())
    with torch.no_grad():
        _logits, kept = model.forward_with_indices(
            torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        )
    assert [indices.shape[1] - 1 for indices in kept.values()] == truncated  # CLS comes on top of the k tokens
