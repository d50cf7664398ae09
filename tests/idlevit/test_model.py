"""The reference forward against independent ground truths: timm's ViT and a per-sample loop."""

from __future__ import annotations

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

import idlevit

from ..conftest import make_model


def test_all_ratios_one_equals_timm_dense_vit(deit_small: idlevit.IdleViT) -> None:
    dense = idlevit.create_model("deit_small", keep_rate=1.0).eval()
    dense.load_state_dict(deit_small.state_dict())
    timm_vit = VisionTransformer(embed_dim=384, depth=12, num_heads=6, num_classes=1000).eval()
    timm_vit.load_state_dict(deit_small.state_dict(), strict=True)
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(dense(images), timm_vit(images), atol=1e-5, rtol=1e-5)


def _naive_idle_layer(model: idlevit.IdleViT, block, x: torch.Tensor, k: int) -> tuple[torch.Tensor, list]:
    """IDLEVIT.md steps 1-7 for one sample at a time, per head, with plain loops and indexing."""
    heads = block.attn.num_heads
    dim = x.shape[-1]
    head_dim = dim // heads
    out, kept_sets = x.clone(), []
    for b in range(x.shape[0]):
        xn = block.norm1(x[b])  # (N+1, C)
        qkv = xn @ block.attn.qkv.weight.T + block.attn.qkv.bias
        q, keys, v = qkv[:, :dim], qkv[:, dim : 2 * dim], qkv[:, 2 * dim :]
        per_head = [
            (q[0, h * head_dim : (h + 1) * head_dim] * keys[1:, h * head_dim : (h + 1) * head_dim]).sum(-1)
            for h in range(heads)
        ]
        scores = torch.stack(per_head).mean(0)
        kept = [0] + [int(i) + 1 for i in torch.topk(scores, k).indices]
        kept_sets.append(set(kept))
        qk, kk, vk = q[kept], keys[kept], v[kept]
        heads_out = []
        for h in range(heads):
            sl = slice(h * head_dim, (h + 1) * head_dim)
            attn = torch.softmax(qk[:, sl] @ kk[:, sl].T * head_dim**-0.5, dim=-1)
            heads_out.append(attn @ vk[:, sl])
        y = x[b, kept] + block.attn.proj(torch.cat(heads_out, dim=-1))
        y = y + block.mlp(block.norm2(y))
        out[b, kept] = y
    return out, kept_sets


def test_idle_layer_matches_a_per_sample_loop_and_leaves_idle_tokens_bit_identical(
    deit_small: idlevit.IdleViT,
) -> None:
    block, k = deit_small.blocks[3], deit_small.idle_plan[3]
    with torch.no_grad():
        x = deit_small.embed(torch.randn(3, 3, 224, 224))
        x = deit_small.dense_block(deit_small.blocks[0], x)
        got, kept = deit_small.idle_block_reference(block, x, k)
        want, want_sets = _naive_idle_layer(deit_small, block, x, k)
    assert [set(row.tolist()) for row in kept] == want_sets
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    for b, row in enumerate(kept):
        idle = sorted(set(range(x.shape[1])) - set(row.tolist()))
        assert len(idle) == x.shape[1] - k - 1
        assert torch.equal(got[b, idle], x[b, idle])  # bit-identical pass-through


def test_export_forward_equals_reference(deit_small: idlevit.IdleViT) -> None:
    images = torch.randn(4, 3, 224, 224)
    with torch.no_grad():
        logits, kept = deit_small.forward_with_indices(images)
        exported = deit_small.forward_export(images, with_indices=True)
    torch.testing.assert_close(exported[0], logits, atol=1e-5, rtol=1e-5)
    for layer, got in zip(deit_small.schedule.idle_layers, exported[1:], strict=True):
        assert torch.equal(got, kept[layer])


def test_selection_depends_on_each_sample_only() -> None:
    """Batch > 1 must not mix samples: each row's kept tokens equal its batch-1 run."""
    model = make_model("deit_tiny", img_size=64, patch_size=8, num_classes=10)
    images = torch.randn(5, 3, 64, 64)
    with torch.no_grad():
        _, batched = model.forward_with_indices(images)
        for i in range(5):
            _, single = model.forward_with_indices(images[i : i + 1])
            for layer in single:
                assert torch.equal(single[layer][0], batched[layer][i])


def test_unknown_arch_lists_known_ones() -> None:
    with pytest.raises(idlevit.ToolkitError, match="deit_small"):
        idlevit.create_model("vit_huge")
