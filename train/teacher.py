"""Teacher continuations: what the text LLM says after each transcript (the targets of both stages).

Stage 1 asks for a plain continuation under the plain system prompt; stage 2 names the emotion
and uses the empathetic system prompt (docs/paper.md §2.2, §3.2). The LLM is the BLSP-Emo model's:
text-only use of the model is exactly its base LLM (LoRA touches speech positions only), so the
student is aligned to the very model it extends. Greedy, max_new_tokens 48, min_new_tokens 1,
left-padded batches, as `emotion_text_generation.py` ran.

Output: `{out_dir}/{manifest stem}_{shard}_{num_shards}.jsonl`, one line per input row of the
shard, in input order, with `instruction`, `output`, `early_stop` (no `<|im_end|>` produced, so
training omits the end tokens) and `emotion` ("" when unlabeled) added. A rerun appends after
the last complete line, so a killed job resumes where it stopped.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import GenerationConfig

from blsp_emo.model.tokenizer import ChatTokenizer
from blsp_emo.prompts import IM_END, instruction_pieces
from train.manifest import RAW_KEYS, Row, read_rows
from train.stages import Stage

MAX_NEW_TOKENS = 48  # docs/paper.md §2.4
CHUNK = 16  # batches of rows read at once (see generate_teacher_outputs)


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    def __post_init__(self):
        if not 0 <= self.index < self.count:
            raise ValueError(f"shard must be in [0, num_shards), got shard {self.index} of {self.count}")

    def size(self, manifest: str | Path) -> int:
        """Rows of `manifest` in this shard (a raw line count: no JSON parsing)."""
        with open(manifest, encoding="utf-8") as f:
            lines = sum(1 for line in f if line.strip())
        return len(range(self.index, lines, self.count))

    def output_path(self, manifest: str | Path, out_dir: str | Path) -> Path:
        return Path(out_dir) / f"{Path(manifest).stem}_{self.index}_{self.count}.jsonl"


def completed_lines(path: Path) -> int:
    """Complete lines already written; a line cut by a kill is removed so it is redone."""
    if not path.exists():
        return 0
    count = end = 0
    with path.open("rb+") as f:  # streamed: an output file can hold a million lines
        for line in f:
            if line.endswith(b"\n"):
                count, end = count + 1, end + len(line)
        f.truncate(end)
    return count


def continue_prompts(
    llm, tokenizer: ChatTokenizer, prompts: Sequence[list[int]], max_new_tokens: int = MAX_NEW_TOKENS
) -> list[tuple[str, bool]]:
    """Greedy continuations of left-padded prompt ids: (text, early_stop) per prompt."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), tokenizer.pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        min_new_tokens=1,
        do_sample=False,
        num_beams=1,
        eos_token_id=sorted(tokenizer.stop_ids),
        pad_token_id=tokenizer.pad_id,
    )
    with torch.inference_mode():
        out = llm.generate(input_ids=ids.to(llm.device), attention_mask=mask.to(llm.device), generation_config=config)
    im_end = tokenizer.special_ids[IM_END]
    results = []
    for row in out[:, width:].tolist():
        stop = next((i for i, token in enumerate(row) if token in tokenizer.stop_ids), None)
        text = tokenizer.decode(row if stop is None else row[:stop]).strip()
        results.append((text, stop is None or row[stop] != im_end))
    return results


def _batches(rows: Iterator[Row], size: int) -> Iterator[list[Row]]:
    batch: list[Row] = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def generate_teacher_outputs(
    llm,
    tokenizer: ChatTokenizer,
    stage: Stage,
    manifest: str | Path,
    out_dir: str | Path,
    shard: Shard = Shard(0, 1),
    batch_size: int = 4,
    max_new_tokens: int = MAX_NEW_TOKENS,
) -> dict:
    """Write this shard's teacher outputs for `manifest`; returns a summary of what was done.

    A stage whose teacher is told the emotion skips (and counts) rows without a label.
    """
    out = shard.output_path(manifest, out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = completed_lines(out)
    skipped: Counter = Counter()
    # disable=None: a bar on a terminal, none in logs and tests.
    bar = tqdm(total=shard.size(manifest), desc=f"teacher {out.name}", unit="row", disable=None)

    def todo() -> Iterator[Row]:
        eligible = 0
        for i, row in enumerate(read_rows([manifest], RAW_KEYS)):
            if i % shard.count != shard.index:
                continue
            bar.update()
            if stage.names_emotion and not row.emotion:
                skipped["no_emotion"] += 1
                continue
            eligible += 1
            if eligible > done:  # the first `done` were written by an earlier run
                yield row

    written = early = 0
    # Greedy output depends only on the prompt: a sentence spoken in five tones or by several
    # voices shares one generation (exact, not an approximation).
    memo: dict[tuple[int, ...], tuple[str, bool]] = {}
    with out.open("a", encoding="utf-8") as f:
        # Rows are taken CHUNK batches at a time and their distinct prompts generated together:
        # a sentence in five tones by two voices is one prompt for stage 1, so batching rows
        # would generate a handful of prompts per batch and pay a whole batch's steps for them.
        for batch in _batches(todo(), batch_size * CHUNK):
            instructions = [stage.teacher_prompt(row.emotion) for row in batch]
            # Instruction and transcript are tokenised as separate pieces, as the KL teacher sees
            # them in training (the released teacher joined them into one string, docs/paper.md §2.3).
            prompts = [
                tokenizer.encode_pieces(
                    instruction_pieces(stage.system_prompt, instr, str(row.fields["text"]))
                ).input_ids
                for instr, row in zip(instructions, batch)
            ]
            missing = sorted(dict.fromkeys(tuple(p) for p in prompts if tuple(p) not in memo), key=len)
            for i in range(0, len(missing), batch_size):  # sorted by length: little padding
                chunk = missing[i : i + batch_size]
                memo.update(zip(chunk, continue_prompts(llm, tokenizer, [list(p) for p in chunk], max_new_tokens)))
            for row, instr, (text, early_stop) in zip(batch, instructions, (memo[tuple(p)] for p in prompts)):
                line = {
                    **row.fields,
                    "instruction": instr,
                    "output": text,
                    "early_stop": early_stop,
                    "emotion": row.emotion,
                }
                f.write(json.dumps(line, ensure_ascii=False) + "\n")
                early += early_stop
            f.flush()  # a kill loses at most the rows in flight
            written += len(batch)
    bar.close()
    return {
        "output": str(out),
        "resumed_after": done,
        "written": written,
        "early_stop": early,
        "skipped": dict(skipped),
    }
