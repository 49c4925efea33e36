"""`TokenSampler` picks what transformers' logits processors, applied as a `LogitsProcessorList`, pick."""

import pytest
import torch
from transformers.generation.logits_process import LogitsProcessorList

from blsp_emo.decoding.generation import TokenSampler, _processors
from blsp_emo.options import GenerationOptions

STOP = frozenset({0, 1})


def _reference(options: GenerationOptions, logits: list[torch.Tensor], seed: int) -> list[int]:
    """Every processor on every token through `LogitsProcessorList`, as `generate` applies them."""
    processors = LogitsProcessorList(_processors(options, STOP))
    generator = torch.Generator().manual_seed(seed)
    history, out = torch.empty((1, 0), dtype=torch.long), []
    for row in logits:
        if len(out) >= options.max_new_tokens:
            break
        scores = processors(history, row.float())
        token = (
            scores.argmax(-1, keepdim=True)
            if options.greedy
            else torch.multinomial(scores.softmax(-1), 1, generator=generator)
        )
        if int(token) in STOP:
            break
        history = torch.cat([history, token], dim=1)
        out.append(int(token))
    return out


@pytest.mark.parametrize(
    "options",
    [
        GenerationOptions(greedy=True, max_new_tokens=30, min_new_tokens=6),
        GenerationOptions(
            max_new_tokens=30, min_new_tokens=4, temperature=0.7, top_p=0.9, top_k=12, repetition_penalty=1.3
        ),
        GenerationOptions(max_new_tokens=10, min_new_tokens=0, temperature=1.2, top_p=1.0),
    ],
)
def test_the_sampler_picks_what_every_processor_on_every_token_picks(options):
    torch.manual_seed(0)
    logits = [torch.randn(1, 40) * 3 for _ in range(30)]
    for row in logits[:8]:
        row[0, 0] += 8.0  # the stop token leads early on: min_new_tokens must hold it back
    sampler, got = TokenSampler(options, STOP, 5, torch.device("cpu")), []
    for row in logits:
        token = sampler.pick(row)
        if token is None:
            break
        got.append(int(token))
    assert got == _reference(options, logits, 5)
    assert len(got) >= options.min_new_tokens
