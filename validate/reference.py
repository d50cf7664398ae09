"""The PyTorch reference as a Polygraphy runner: the ground truth every backend is checked against.

The model is rebuilt from the checkpoint with the schedule the ONNX file records, so the
reference is the model that was exported, not the user's current command line. Outputs are
named like the exported graph's (``logits``, ``kept_indices_<layer>``); with ``with_scores`` the
runner also returns the CLS token scores of every idle layer (``token_scores_<layer>``, (B, N)),
which the selection check needs to tell near-ties from real flips.

A graph with folded normalisation takes RGB pixels 0..255; the runner then normalises the feeds
it gets (``(x / 255 - mean) / std`` with the recorded mean/std, :func:`reference_normalization`)
before the model, which always takes normalised images.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch
from polygraphy.backend.base import BaseRunner
from polygraphy.common import TensorMetadata
from polygraphy.datatype import DataType

from idlevit.checkpoint import load_checkpoint
from idlevit.data import normalize
from idlevit.errors import CheckpointError
from idlevit.metadata import ExportMetadata
from idlevit.model import IdleViT, cls_token_scores
from idlevit.names import IMAGES, LOGITS, kept_indices_name, token_scores_name

from .sources import recorded_checkpoint, reference_checkpoint  # noqa: F401 - the PyTorch side's names

REFERENCE = "pytorch"


def load_reference(ckpt: str | os.PathLike[str], meta: ExportMetadata) -> IdleViT:
    """The checkpoint's model with the exported schedule; refuse one that cannot be the graph's source."""
    model = load_checkpoint(ckpt, arch=meta.arch, idle_layers=meta.idle_layers, keep_ratios=meta.keep_ratios)
    got = (model.cfg.img_size, model.cfg.num_classes, list(model.idle_plan.values()))
    want = (meta.img_size, meta.num_classes, list(meta.keep_tokens))
    if got != want:
        raise CheckpointError(
            f"checkpoint {os.fspath(ckpt)!r} gives (image size, classes, kept tokens) {got} but the ONNX "
            f"records {want}; pass the checkpoint the graph was exported from"
        )
    return model


def reference_normalization(meta: ExportMetadata) -> tuple[list[float], list[float]] | None:
    """``(mean, std)`` the reference applies to the feeds of ``meta``'s graph; None unless it is folded."""
    return (list(meta.mean), list(meta.std)) if meta.folded_normalization else None


class TorchRunner(BaseRunner):
    """Runs :meth:`IdleViT.forward_with_indices` (the eager reference) on numpy feeds.

    ``normalize`` ``(mean, std)``: the feeds are RGB pixels 0..255 (a graph with folded
    normalisation) and are normalised as ``(x / 255 - mean) / std`` before the model.
    """

    def __init__(
        self,
        model: IdleViT,
        with_indices: bool = True,
        with_scores: bool = False,
        device: str = "cpu",
        threads: int = 0,
        name: str = REFERENCE,
        normalize: tuple[Sequence[float], Sequence[float]] | None = None,
    ) -> None:
        super().__init__(name=name, prefix="pytorch-runner")
        self.model = model.eval()
        self.normalize = normalize
        self.with_indices = with_indices or with_scores
        self.with_scores = with_scores
        self.device = torch.device(device)
        self.threads = threads  # 0: PyTorch's own choice; set while active, restored after
        self._saved_threads = 0
        self._scores: dict[int, torch.Tensor] = {}
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []

    def activate_impl(self) -> None:
        self.model.to(self.device)
        if self.threads:
            self._saved_threads = torch.get_num_threads()
            torch.set_num_threads(self.threads)
        if self.with_scores:
            for layer in self.model.idle_plan:
                block = self.model.blocks[layer]
                self._hooks.append(block.norm1.register_forward_hook(self._score_hook(layer)))

    def _score_hook(self, layer: int):
        """Capture the scores the idle layer ranks by, from its own ``norm1`` output (same maths, same op)."""
        block = self.model.blocks[layer]

        def hook(_module: torch.nn.Module, _inputs: tuple, xn: torch.Tensor) -> None:
            self._scores[layer] = cls_token_scores(block, xn)[0]

        return hook

    def get_input_metadata_impl(self) -> TensorMetadata:
        size = self.model.cfg.img_size
        return TensorMetadata().add(IMAGES, DataType.FLOAT32, ("batch", 3, size, size))

    def infer_impl(self, feed_dict: dict[str, np.ndarray]) -> OrderedDict[str, np.ndarray]:
        images = torch.from_numpy(np.ascontiguousarray(feed_dict[IMAGES])).to(self.device)
        start = time.perf_counter()
        with torch.no_grad():
            if self.normalize is not None:
                images = normalize(images / 255.0, *self.normalize)
            logits, kept = self.model.forward_with_indices(images)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.inference_time = time.perf_counter() - start
        outputs: OrderedDict[str, np.ndarray] = OrderedDict([(LOGITS, logits.cpu().numpy())])
        if self.with_indices:
            for layer, positions in kept.items():
                outputs[kept_indices_name(layer)] = positions.cpu().numpy()
        if self.with_scores:
            for layer, scores in self._scores.items():
                outputs[token_scores_name(layer)] = scores.cpu().numpy()
        return outputs

    def deactivate_impl(self) -> None:
        if self._saved_threads:
            torch.set_num_threads(self._saved_threads)
            self._saved_threads = 0
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()
        self._scores.clear()
