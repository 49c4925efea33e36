"""The weights a decode step reads, arranged on CPU so that reading them runs at memory speed.

A decode step multiplies one row of activations per reply by every weight of the LLM, so its time is
the time to stream the weights from memory. On CPU (measured in docs/performance.md) BLAS streams a
row-major (out, in) weight for `F.linear(x, w)` at about half the rate it reaches on the same weight
stored (in, out), one such call keeps one core busy however many torch has, and a 0.4 MB projection
costs a call's overhead for little work. So on CPU, in float32, the weights are rearranged in place
once per model:

- the projections that share an input (q, k and v; gate and up) become one (in, out) block each, and
  o and down are stored transposed, each parameter becoming a view of the new memory: values,
  shapes and names stay what every other reader (the prefill, LoRA, training) expects, and nothing
  is copied;
- a block is multiplied as a batch of row slices, one per thread (torch's thread count when the
  model is first decoded), each thread streaming one contiguous part;
- a head tied to the input embeddings is read from a transposed copy instead (113 MB for
  SmolLM2-135M): transformers saves tied tensors as flat memory, so their layout is not touched.

`state_dict()` hands out plain copies of rearranged parameters, so checkpoints save as before.
Elsewhere (GPU, half precision) the usual layout is the fast one and `F.linear` stays.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Product:
    """Rows x (B, 1, in) times one or more weights that share the input, as one call where arranged."""

    weights: tuple[torch.Tensor, ...]  # (out, in) each: views of `slices`' memory where arranged
    biases: tuple[torch.Tensor | None, ...]
    slices: torch.Tensor | None = None  # arranged: (parts, in / parts, out), the (in, out) block's row slices
    bias: torch.Tensor | None = None  # arranged: the parts' biases end to end, (out,)

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.slices is None:
            return tuple(F.linear(x, w, b) for w, b in zip(self.weights, self.biases))
        parts, width, n_out = self.slices.shape
        # Each slice is a contiguous block of rows, multiplied by its share of x's columns: a batch of
        # `parts` calls that BLAS runs one per thread, each streaming its own block; then the sum.
        y = torch.bmm(x.reshape(-1, parts, width).transpose(0, 1), self.slices).sum(0).unsqueeze(1)
        if self.bias is not None:
            y = y.add_(self.bias)
        return y.split([w.shape[0] for w in self.weights], dim=-1) if len(self.weights) > 1 else (y,)


@dataclass(frozen=True)
class LayerWeights:
    input_norm: torch.Tensor
    post_norm: torch.Tensor
    qkv: Product
    o: Product
    gate_up: Product
    down: Product


@dataclass(frozen=True)
class StepWeights:
    layers: tuple[LayerWeights, ...]
    head: Product
    arranged: bool


def _sliced(memory: torch.Tensor) -> torch.Tensor:
    """An (in, out) block as row slices, one per thread, as many as divide `in` evenly."""
    n_in = memory.shape[0]
    parts = next(p for p in range(max(1, torch.get_num_threads()), 0, -1) if n_in % p == 0)
    return memory.view(parts, n_in // parts, memory.shape[1])


_LOCK = threading.Lock()
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # LLM -> its StepWeights


def step_weights(llm) -> StepWeights:
    """The weights of `llm` as the decode step reads them, arranged on first use (see the module
    docstring). One arrangement per model, whichever thread asks first."""
    with _LOCK:
        found = _CACHE.get(llm)
        if found is None:
            head = llm.lm_head.weight
            arrange = head.device.type == "cpu" and head.dtype == torch.float32
            # Tensors of the kind the weights were: ordinary ones even when the first step runs under
            # inference_mode, so that they stay usable in training (an inference tensor cannot be
            # saved for backward).
            with torch.inference_mode(head.is_inference()), torch.no_grad():
                found = _CACHE[llm] = _collect(llm, arrange)
            if arrange:
                llm.register_state_dict_post_hook(_plain_copies)
        return found


def _collect(llm, arrange: bool) -> StepWeights:
    product = _joined if arrange else _plain
    layers = tuple(
        LayerWeights(
            input_norm=layer.input_layernorm.weight,
            post_norm=layer.post_attention_layernorm.weight,
            qkv=product([layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj]),
            o=product([layer.self_attn.o_proj]),
            gate_up=product([layer.mlp.gate_proj, layer.mlp.up_proj]),
            down=product([layer.mlp.down_proj]),
        )
        for layer in llm.model.layers
    )
    head = llm.lm_head
    if arrange and head.weight is llm.model.embed_tokens.weight:
        copy = head.weight.detach().t().contiguous()
        head_product = Product((copy.t(),), (head.bias,), _sliced(copy), head.bias)
    else:
        head_product = product([head])
    return StepWeights(layers, head_product, arrange)


def _plain(linears: list[nn.Linear]) -> Product:
    return Product(tuple(m.weight for m in linears), tuple(m.bias for m in linears))


def _joined(linears: list[nn.Linear]) -> Product:
    """One (in, sum of outs) block for `linears`, each weight (and bias) becoming a view of it."""
    first = linears[0].weight
    sizes = [m.weight.shape[0] for m in linears]
    memory = torch.empty(first.shape[1], sum(sizes), dtype=first.dtype, device=first.device)
    with_bias = any(m.bias is not None for m in linears)
    bias = torch.zeros(sum(sizes), dtype=first.dtype, device=first.device) if with_bias else None
    start = 0
    for m, size in zip(linears, sizes):
        block = memory[:, start : start + size]
        block.copy_(m.weight.t())
        m.weight.data = block.t()
        if m.bias is not None:
            bias[start : start + size].copy_(m.bias)
            m.bias.data = bias[start : start + size]
        start += size
    return Product(tuple(m.weight for m in linears), tuple(m.bias for m in linears), _sliced(memory), bias)


def _plain_copies(module, state_dict, prefix, local_metadata) -> None:
    """A rearranged parameter is a view into a shared block; a checkpoint gets it as its own tensor."""
    for key, value in state_dict.items():
        if key.startswith(prefix) and value.untyped_storage().nbytes() != value.numel() * value.element_size():
            state_dict[key] = value.contiguous() if not value.is_contiguous() else value.clone()
