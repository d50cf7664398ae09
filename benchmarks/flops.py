"""FLOPs of one image through an IdleViT, counted with ``torch.utils.flop_counter`` on any device.

timm's dense attention calls ``scaled_dot_product_attention``; on CPU tensors that dispatches to
``aten._scaled_dot_product_flash_attention_for_cpu``, which torch's counter has no formula for
(on meta tensors it decomposes into matmuls, which it counts). The formula torch uses for the
other SDPA kernels is registered for that one too, so a count is the same on every device.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

import idlevit


def _cpu_sdpa_flops(query_shape: Any, key_shape: Any, value_shape: Any, *_args: Any, **_kwargs: Any) -> int:
    return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


#: Kernels torch's counter misses, with the formula of their kind.
EXTRA_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops}


def count_flops(model: idlevit.IdleViT, forward: Callable[[torch.Tensor], object] | None = None) -> int:
    """FLOPs of one image (matmuls, attention and convolutions, 2 per multiply-add).

    ``forward`` defaults to the reference forward; pass ``model.forward_export`` to count the
    graph that is exported. Models on the ``meta`` device count too (no weights needed).
    """
    size = model.cfg.img_size
    images = torch.zeros(1, 3, size, size, device=model.cls_token.device)
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=EXTRA_FORMULAS) as counter:
        (forward or model)(images)
    return int(counter.get_total_flops())
