"""Training-time idle layers keep what inference keeps; a short run learns; the bundled demo works."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import idlevit
from idlevit import data
from idlevit.recipe import DEMO_ARCH
from idlevit.training import TrainConfig, fit, forward_train, idle_block_train, top1

needs_demo = pytest.mark.skipif(
    not (idlevit.DEMO_CHECKPOINT.is_file() and idlevit.DEMO_TEACHER.is_file()),
    reason="bundled demo checkpoints not built (python -m idlevit.finetune --recipe demo)",
)


def test_training_forward_keeps_the_same_tokens_as_inference(deit_tiny: idlevit.IdleViT) -> None:
    torch.manual_seed(1)
    images = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        out = forward_train(deit_tiny, images)
        logits, kept = deit_tiny.forward_with_indices(images)
    assert list(out.kept) == list(kept) == list(deit_tiny.schedule.idle_layers)
    for layer, reference in kept.items():
        assert out.kept[layer].shape == reference.shape
        assert torch.equal(out.kept[layer][:, 0], reference[:, 0])  # CLS first
        for row_train, row_ref in zip(out.kept[layer].tolist(), reference.tolist()):
            assert set(row_train) == set(row_ref), f"layer {layer} keeps other tokens in training"
    # Kept tokens compute what inference computes, so the logits agree too.
    assert torch.allclose(out.logits, logits, atol=1e-4)
    # The masks mark exactly the kept positions, CLS included.
    for mask, layer in zip(out.keep_masks, kept):
        assert torch.equal(mask.sum(1), torch.full((4,), float(kept[layer].shape[1])))
        assert torch.all(mask.gather(1, kept[layer]) == 1)


def test_idle_tokens_pass_through_a_training_idle_layer(deit_tiny: idlevit.IdleViT) -> None:
    torch.manual_seed(2)
    x = torch.randn(2, deit_tiny.cfg.num_tokens + 1, deit_tiny.cfg.embed_dim)
    block = deit_tiny.blocks[3]
    with torch.no_grad():
        y, kept, mask, attn_map = idle_block_train(deit_tiny, block, x, deit_tiny.idle_plan[3])
    idle = mask == 0
    assert idle.sum() == 2 * (deit_tiny.cfg.num_tokens - deit_tiny.idle_plan[3])
    assert torch.equal(y[idle], x[idle])
    assert not torch.allclose(y[~idle], x[~idle])
    # W is a row-stochastic map over all tokens (idle ones included: the cut loss needs them).
    assert attn_map.shape == (2, x.shape[1], x.shape[1])
    assert torch.allclose(attn_map.sum(-1), torch.ones(2, x.shape[1]))
    assert torch.all(attn_map[idle.unsqueeze(1).expand_as(attn_map)] > 0)


def _tiny(idle_layers: list[int], ratios: list[float]) -> idlevit.IdleViT:
    """A 3-block, 48-wide deit_tiny variant at 16 px (16 tokens): fast enough to train in a test."""
    return idlevit.create_model(
        "deit_tiny",
        idle_layers=idle_layers,
        keep_ratios=ratios,
        depth=3,
        embed_dim=48,
        img_size=16,
        patch_size=4,
        num_classes=10,
    )


def test_a_short_distillation_run_lowers_the_loss() -> None:
    torch.manual_seed(0)
    teacher = _tiny([], [])
    student = _tiny([1, 2], [0.7, 0.5])
    student.load_state_dict(teacher.state_dict())
    images, labels = data.digits_split("train", 16)
    train_set = torch.utils.data.TensorDataset(
        data.normalize(images[:128], data.DIGITS_MEAN, data.DIGITS_STD), labels[:128]
    )
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    cfg = TrainConfig(epochs=6, batch_size=32, lr=2e-3, warmup_epochs=0.5, cut_loss="both")
    history = fit(student, train_set, cfg, teacher=teacher, progress=False)
    assert len(history) == 6
    assert set(history[0]) == {"loss", "ce", "kl", "feat", "cut"}
    assert history[-1]["loss"] < 0.8 * history[0]["loss"]
    assert history[-1]["ce"] < history[0]["ce"]
    # The teacher is frozen.
    assert all(torch.equal(v, teacher_before[k]) for k, v in teacher.state_dict().items())


@pytest.mark.parametrize("averaged", [False, True])
def test_training_is_seeded(averaged: bool) -> None:
    images, labels = data.digits_split("test", 16)
    train_set = torch.utils.data.TensorDataset(images[:64], labels[:64])
    cfg = TrainConfig(epochs=1, batch_size=32, max_shift=1, seed=3)
    if averaged:
        cfg = replace(cfg, label_smoothing=0.1, ema_decay=0.9)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = _tiny([1], [0.5])
        fit(model, train_set, cfg, progress=False)
        runs.append(model.state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_moving_average_replaces_the_last_iterate() -> None:
    """With ema_decay the model ends with averaged weights: not the plain run's last step."""
    images, labels = data.digits_split("test", 16)
    train_set = torch.utils.data.TensorDataset(images[:64], labels[:64])
    runs = {}
    for decay in (0.0, 0.9):
        torch.manual_seed(0)
        model = _tiny([1], [0.5])
        fit(model, train_set, TrainConfig(epochs=2, batch_size=16, seed=1, ema_decay=decay), progress=False)
        runs[decay] = model.state_dict()
    weights = [k for k, v in runs[0.0].items() if v.is_floating_point()]
    assert any(not torch.equal(runs[0.0][k], runs[0.9][k]) for k in weights)
    assert all(torch.isfinite(runs[0.9][k]).all() for k in weights)


def test_training_writes_no_progress_bar_to_a_log(capfd: pytest.CaptureFixture[str]) -> None:
    """stderr is not a terminal (a redirected log): no carriage-return progress bar."""
    images, labels = data.digits_split("test", 16)
    train_set = torch.utils.data.TensorDataset(images[:64], labels[:64])
    fit(_tiny([1], [0.5]), train_set, TrainConfig(epochs=2, batch_size=32), progress=True)
    err = capfd.readouterr().err
    assert "\r" not in err and "epoch" not in err


def test_demo_recipe_trains_both_stages_with_the_given_threads_and_seed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from idlevit import finetune, trainer

    seen = []

    def record(model: idlevit.IdleViT, train_set: object, cfg: TrainConfig, **kwargs: object) -> list:
        seen.append((bool(model.idle_plan), torch.get_num_threads(), cfg))
        return []

    monkeypatch.setattr(trainer, "fit", record)
    threads = torch.get_num_threads()
    try:
        finetune.main(["--recipe", "demo", "--out-dir", str(tmp_path), "--threads", "1", "--seed", "7", "--quiet"])
    finally:
        torch.set_num_threads(threads)
    assert [(idle, n, cfg.seed) for idle, n, cfg in seen] == [(False, 1, 7), (True, 1, 7)]
    assert [cfg for _, _, cfg in seen] == [
        replace(finetune.DENSE_RECIPE, seed=7),
        replace(finetune.STUDENT_RECIPE, seed=7),
    ]
    assert (tmp_path / idlevit.DEMO_TEACHER.name).is_file() and (tmp_path / idlevit.DEMO_CHECKPOINT.name).is_file()
    with pytest.raises(idlevit.ToolkitError, match="--out-dir"):
        finetune.main(["--recipe", "demo", "--seed", "7"])  # would overwrite the bundled seed-0 files


@pytest.fixture(scope="module")
def digits_test() -> torch.utils.data.Dataset:
    demo = idlevit.load_checkpoint("demo")
    return data.load_dataset("digits", "test", demo.data_config)


@needs_demo
def test_bundled_demo_is_trained_and_close_to_its_teacher(digits_test: torch.utils.data.Dataset) -> None:
    demo = idlevit.load_checkpoint("demo")
    teacher = idlevit.load_checkpoint(idlevit.DEMO_TEACHER, idle_layers=[], keep_ratios=[])
    assert demo.cfg.name == DEMO_ARCH and idlevit.infer_arch(demo.state_dict()).name == DEMO_ARCH
    assert demo.cfg.num_tokens >= 64 and demo.idle_plan == {
        3: 44,
        4: 44,
        5: 44,
        6: 31,
        7: 31,
        8: 31,
        9: 21,
        10: 21,
        11: 21,
    }
    assert demo.cfg.mean == data.DIGITS_MEAN and demo.cfg.std == data.DIGITS_STD
    # shipped inside the package: a few MB each at most
    assert max(idlevit.DEMO_CHECKPOINT.stat().st_size, idlevit.DEMO_TEACHER.stat().st_size) < 8 * 2**20
    demo_top1, teacher_top1 = top1(demo, digits_test), top1(teacher, digits_test)
    assert demo_top1 > 90.0
    assert demo_top1 >= teacher_top1 - 1.0
    # On real images the training forward keeps the same tokens as the reference.
    images, _ = data.digits_split("test", demo.cfg.img_size)
    batch = data.normalize(images[:64], demo.cfg.mean, demo.cfg.std)
    with torch.no_grad():
        _, kept = demo.forward_with_indices(batch)
        train_kept = forward_train(demo, batch).kept
    for layer in kept:
        assert [set(r) for r in train_kept[layer].tolist()] == [set(r) for r in kept[layer].tolist()]


@needs_demo
def test_bundled_demo_selects_better_than_chance(
    digits_test: torch.utils.data.Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Token selection is learnt: keeping the tokens CLS attention ranks highest beats keeping random ones."""
    import idlevit.model

    demo = idlevit.load_checkpoint("demo")
    learnt = top1(demo, digits_test)
    draws = torch.Generator().manual_seed(0)
    select = idlevit.model.select_tokens
    monkeypatch.setattr(
        idlevit.model, "select_tokens", lambda scores, k: select(torch.rand(scores.shape, generator=draws), k)
    )
    chance = [top1(demo, digits_test) for _ in range(5)]
    # (measured on the bundled model: 97.11% against a mean of 96.44% over these five random draws)
    assert learnt > sum(chance) / len(chance)


@needs_demo
def test_export_onnx_defaults_to_the_demo_and_onnx_runtime_agrees(tmp_path: Path) -> None:
    import onnxruntime as ort

    from export.onnx import main
    from idlevit.metadata import read_metadata

    out = tmp_path / "demo.onnx"
    assert main(["--out", str(out), "--quiet", "--no-verify"]) == 0
    meta = read_metadata(out)
    assert meta.checkpoint == "demo" and meta.arch == DEMO_ARCH
    assert tuple(meta.mean) == data.DIGITS_MEAN and tuple(meta.std) == data.DIGITS_STD
    demo = idlevit.load_checkpoint("demo")
    images, _ = data.digits_split("test", demo.cfg.img_size)
    batch = data.normalize(images[:32], meta.mean, meta.std)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {idlevit.IMAGES: batch.numpy()})
    with torch.no_grad():
        reference = demo(batch).numpy()
    assert np.abs(logits - reference).max() < 1e-3
    assert (logits.argmax(1) == reference.argmax(1)).all()


def test_finetune_cli_trains_on_an_image_folder(tmp_path: Path) -> None:
    from PIL import Image

    from idlevit.finetune import main

    images, labels = data.digits_split("train", 32)
    for split, rows in (("train", range(0, 16)), ("val", range(16, 24))):
        for i in rows:
            folder = tmp_path / "digits" / split / f"class_{int(labels[i]) % 2}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray((images[i].permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(folder / f"{i}.png")
    out = tmp_path / "dense.pth"
    args = ["--dataset", str(tmp_path / "digits"), "--dense", "--epochs", "1", "--batch-size", "8", "--quiet"]
    assert main([*args, "--out", str(out)]) == 0
    model = idlevit.load_checkpoint(out, idle_layers=[], keep_ratios=[])
    assert (model.cfg.name, model.cfg.img_size, model.cfg.patch_size, model.cfg.num_classes) == (DEMO_ARCH, 32, 4, 2)
    _, extras = idlevit.read_checkpoint(out)
    assert "optimizer" not in extras and 0.0 <= extras["train"]["test_top1"] <= 100.0
    assert all(v.dtype == torch.float32 for v in model.state_dict().values())


def test_finetune_cli_needs_a_teacher_for_a_student(tmp_path: Path) -> None:
    from idlevit.errors import ToolkitError
    from idlevit.finetune import main

    with pytest.raises(ToolkitError, match="--teacher"):
        main(["--out", str(tmp_path / "student.pth")])
