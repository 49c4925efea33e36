"""One decoding step of a Qwen2 LLM as plain tensor operations: the reply's tokens after the prefill.

At demo scale a decode step through transformers' modules is mostly Python: about 45 module calls,
config lookups and output dataclasses per token for a few microseconds of arithmetic each
(docs/performance.md). `Qwen2DecodeStep` runs the same computation on the same weights with one call
per operation, as gpt-fast-style decoders do; on CPU it reads them as `step_weights.py` arranges
them. It is used only where that computation is simple: one new token per row, base weights (the
audio LoRA touches the prefill only), full attention with RoPE. The prefill, training and anything
else keep transformers' forward, and `decode_step` falls back to it for any other model.
`tests/test_decode_step.py` checks the logits and the cache against transformers' forward.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from transformers import DynamicCache, Qwen2ForCausalLM
from transformers.activations import ACT2FN

from blsp_emo.decoding.step_weights import step_weights

# (tokens (B, 1), cache, positions (B, 1) or None, attention mask (B, L) or None) -> logits (B, V)
Step = Callable[[torch.Tensor, DynamicCache, torch.Tensor | None, torch.Tensor | None], torch.Tensor]


class Qwen2DecodeStep:
    """The next-token logits of a `Qwen2ForCausalLM` for one new token per row, its keys and values
    appended to `cache`. `positions` default to the cache length; `mask` (1 = attend) covers the
    cached positions plus the new one, for rows left-padded into one batch."""

    def __init__(self, llm: Qwen2ForCausalLM):
        config = llm.config
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.scaling = self.head_dim**-0.5
        self.eps = config.rms_norm_eps
        self.act = ACT2FN[config.hidden_act]
        body = llm.model
        self.embed, self.rotary = body.embed_tokens.weight, body.rotary_emb
        self.weights = step_weights(llm)
        self.norm = body.norm.weight
        # Default RoPE depends on the position only, so its cos and sin are read from a table instead of
        # recomputed per token; scaled variants (dynamic NTK...) may change with the length and keep the module.
        self._table_ok = getattr(self.rotary, "rope_type", "default") == "default"
        self._table: tuple[torch.Tensor, torch.Tensor] | None = None  # cos, sin with rotate-half's signs; (P, D)

    @classmethod
    def supports(cls, llm) -> bool:
        config = getattr(llm, "config", None)
        # Split or offloaded by accelerate (several devices in its map): its hooks move weights at call
        # time, which reading the weights directly would bypass.
        placed_once = len(set((getattr(llm, "hf_device_map", None) or {}).values())) <= 1
        return (
            isinstance(llm, Qwen2ForCausalLM)
            and placed_once
            and not getattr(config, "use_sliding_window", False)
            and all(t == "full_attention" for t in getattr(config, "layer_types", None) or ["full_attention"])
        )

    def __call__(
        self,
        tokens: torch.Tensor,
        cache: DynamicCache,
        positions: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        batch, length = tokens.shape[0], cache.get_seq_length()
        if positions is None:
            positions = torch.full((batch, 1), length, dtype=torch.long, device=tokens.device)
        h = F.embedding(tokens, self.embed)
        cos, sin = self._rope(h, positions, length + 1)
        half = self.head_dim // 2
        attend = None if mask is None else mask.bool()[:, None, None, :]
        for index, w in enumerate(self.weights.layers):
            x = _rms_norm(h, w.input_norm, self.eps)
            q, k, v = w.qkv(x)
            q = q.view(batch, 1, self.heads, self.head_dim).transpose(1, 2)
            k = k.view(batch, 1, self.kv_heads, self.head_dim).transpose(1, 2)
            v = v.view(batch, 1, self.kv_heads, self.head_dim).transpose(1, 2)
            q, k = _rotate(q, cos, sin, half), _rotate(k, cos, sin, half)
            keys, values = _append(cache.layers[index], k, v)
            out = F.scaled_dot_product_attention(
                q, keys, values, attn_mask=attend, scale=self.scaling, enable_gqa=self.kv_heads != self.heads
            )
            h = h + w.o(out.transpose(1, 2).reshape(batch, 1, -1))[0]
            gate, up = w.gate_up(_rms_norm(h, w.post_norm, self.eps))
            h = h + w.down(self.act(gate) * up)[0]
        return self.weights.head(_rms_norm(h, self.norm, self.eps))[0][:, -1]

    def _rope(self, h: torch.Tensor, positions: torch.Tensor, needed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and signed sin (see `_rotate`) for each row's position, shaped (B, 1, 1, D). Every position
        is below `needed` (the cache's length plus the new token: a left-padded row's is below it too)."""
        if not self._table_ok:
            cos, sin = self.rotary(h, positions)
            half = cos.shape[-1] // 2
            return cos.unsqueeze(1), torch.cat((-sin[..., :half], sin[..., half:]), dim=-1).unsqueeze(1)
        table = self._table
        if table is None or table[0].shape[0] < needed or table[0].dtype != h.dtype or table[0].device != h.device:
            size = max(needed, 2 * (table[0].shape[0] if table is not None else 128))
            cos, sin = self.rotary(h, torch.arange(size, device=h.device)[None])
            half = cos.shape[-1] // 2
            table = self._table = (cos[0], torch.cat((-sin[0, :, :half], sin[0, :, half:]), dim=-1))
        return table[0][positions].unsqueeze(1), table[1][positions].unsqueeze(1)


# Positions a layer's keys and values grow by at a time in `_append`: a 64-position step copies the
# cache once every 64 tokens instead of every token, and holds at most 63 unused positions.
ROOM = 64


def _append(layer, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`DynamicCache.update` for one new position per row, in place. transformers concatenates,
    copying the layer's whole cache at every token (and, past 128 KB, the allocator maps fresh pages
    for each copy); here keys and values are views of the start of buffers with room to grow.

    The buffers are written only while the layer still holds the very views made here last time;
    a layer whose keys anything else replaced (a prefill, a crop, a batch's sync) gets new buffers,
    so a view someone else kept of an old buffer is never written over."""
    room = getattr(layer, "_room", None)
    length = layer.keys.shape[-2]
    if room is None or room[2] is not layer.keys or room[3] is not layer.values or length == room[0].shape[-2]:
        shape = (*layer.keys.shape[:-2], length + ROOM, layer.keys.shape[-1])
        room = [layer.keys.new_empty(shape), layer.values.new_empty(shape)]
        room[0][..., :length, :] = layer.keys
        room[1][..., :length, :] = layer.values
    room[0][..., length : length + 1, :] = k
    room[1][..., length : length + 1, :] = v
    layer.keys, layer.values = room[0][..., : length + 1, :], room[1][..., : length + 1, :]
    layer._room = (room[0], room[1], layer.keys, layer.values)
    return layer.keys, layer.values


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """As Qwen2RMSNorm: normalised in float32, scaled in the input's dtype."""
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor, half: int) -> torch.Tensor:
    """RoPE as transformers applies it, x * cos + rotate_half(x) * sin, with rotate_half's minus signs
    moved into `signed_sin`: one roll instead of two slices, a negation and a concatenation, and the
    same products bit for bit (a sign flip is exact)."""
    return x * cos + x.roll(half, -1) * signed_sin


def decode_step(llm) -> Step:
    """The fastest step this LLM supports: `Qwen2DecodeStep`, else transformers' forward."""
    if Qwen2DecodeStep.supports(llm):
        return Qwen2DecodeStep(llm)

    def forward(tokens, cache, positions=None, mask=None):
        return llm(
            input_ids=tokens, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True
        ).logits[:, -1]

    return forward
