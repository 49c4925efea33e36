"""Stage 0, text side: a byte-level BPE tokenizer and a tiny Qwen2 chat LM for the demo scale.

    python -m train pretrain-lm --sentences S.jsonl --out DIR
    python -m train assemble --asr ASR_DIR --lm DIR --out INIT_DIR

`pretrain-lm` trains next-token prediction on the responses of `train/demo_world/corpus.py` (prompts are
context, as in chat fine-tuning). `assemble` joins the CTC-pretrained encoder and this LM with a
fresh adapter into the BLSP-Emo folder that stage 1 starts from (no LoRA yet).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from blsp_emo.model.checkpoint import load_pretrained, save_model
from blsp_emo.model.config import BlspEmoConfig
from blsp_emo.model.model import BlspEmoModel
from blsp_emo.model.processor import pad_rows
from blsp_emo.model.tokenizer import ChatTokenizer, EncodedPrompt, train_bpe_tokenizer
from blsp_emo.prompts import instruction_pieces, response_pieces
from blsp_emo.systems.asr import CtcRecognizer
from train.demo_world.corpus import Example, build_corpus, tokenizer_texts
from train.demo_world.sentences import read_sentences
from train.schedule import warmup_decay


@dataclass(frozen=True)
class LmOptions:
    vocab_size: int = 1024
    hidden_size: int = 192
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    intermediate_size: int = 512
    epochs: int = 2
    batch_tokens: int = 4096
    lr: float = 2e-3
    warmup_steps: int = 50
    emotions_per_sentence: int = 2
    seed: int = 0
    threads: int = 2


def encode(tokenizer: ChatTokenizer, example: Example) -> EncodedPrompt:
    pieces = instruction_pieces(example.system, example.instruction, example.text)
    return tokenizer.encode_pieces(pieces, target=response_pieces(example.response, early_stop=False))


def batches(rows: list[EncodedPrompt], batch_tokens: int, rng: random.Random) -> list[list[EncodedPrompt]]:
    """Length-sorted buckets of about `batch_tokens` tokens (little padding), in random order."""
    ordered = sorted(rows, key=lambda r: len(r.input_ids))
    out, current = [], []
    for row in ordered:
        if current and (len(current) + 1) * len(row.input_ids) > batch_tokens:
            out.append(current)
            current = []
        current.append(row)
    if current:
        out.append(current)
    rng.shuffle(out)
    return out


def lm_config(tokenizer: ChatTokenizer, o: LmOptions, max_positions: int = 1024) -> Qwen2Config:
    return Qwen2Config(
        vocab_size=len(tokenizer.hf),
        hidden_size=o.hidden_size,
        intermediate_size=o.intermediate_size,
        num_hidden_layers=o.layers,
        num_attention_heads=o.heads,
        num_key_value_heads=o.kv_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        rope_theta=10000.0,
        bos_token_id=tokenizer.special_ids["<|im_start|>"],
        eos_token_id=tokenizer.special_ids["<|im_end|>"],
        pad_token_id=tokenizer.pad_id,
    )


def train_lm(
    sentences: list[tuple[str, str | None]], o: LmOptions, log=print
) -> tuple[Qwen2ForCausalLM, ChatTokenizer, dict]:
    torch.manual_seed(o.seed)
    torch.set_num_threads(o.threads)
    examples = build_corpus(sentences, o.seed, o.emotions_per_sentence)
    tokenizer = train_bpe_tokenizer(tokenizer_texts(examples), o.vocab_size)
    rows = [encode(tokenizer, ex) for ex in examples]
    model = Qwen2ForCausalLM(lm_config(tokenizer, o)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=o.lr, weight_decay=0.01)
    rng = random.Random(o.seed)
    plan = [batches(rows, o.batch_tokens, rng) for _ in range(o.epochs)]
    total = sum(len(p) for p in plan)
    schedule = warmup_decay(optimizer, o.warmup_steps, total, "linear")
    step, start, losses = 0, time.perf_counter(), []
    for epoch, epoch_batches in enumerate(plan):
        for group in epoch_batches:
            ids, _, attention, labels = pad_rows(group, tokenizer.pad_id)
            loss = model(input_ids=ids, attention_mask=attention, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            losses.append(loss.item())
            step += 1
            if step % 50 == 0 or step == total:
                log(
                    f"lm step {step}/{total} epoch {epoch} loss {sum(losses[-50:]) / len(losses[-50:]):.4f} "
                    f"({time.perf_counter() - start:.0f} s)"
                )
    report = {
        "examples": len(examples),
        "tokens": sum(len(r.input_ids) for r in rows),
        "steps": step,
        "final_loss": sum(losses[-50:]) / max(1, len(losses[-50:])),
        "seconds": time.perf_counter() - start,
        "parameters": sum(p.numel() for p in model.parameters()),
        "options": asdict(o),
    }
    return model.eval(), tokenizer, report


def assemble(
    asr_dir: str | Path, lm_dir: str | Path, out: str | Path, adapter_inner_dim: int = 256, seed: int = 0
) -> Path:
    """The stage-1 starting folder: the ASR model's encoder + the LM + a new adapter, no LoRA."""
    torch.manual_seed(seed)
    asr = load_pretrained(CtcRecognizer, Path(asr_dir))
    llm = Qwen2ForCausalLM.from_pretrained(str(lm_dir)).eval()
    config = BlspEmoConfig(
        asr.config.encoder_config,
        llm.config,
        adapter_inner_dim=adapter_inner_dim,
        lora_rank=0,
        encode_full_window=asr.config.encode_full_window,
    )
    model = BlspEmoModel(config, encoder=asr.encoder, llm=llm)
    save_model(model, ChatTokenizer.from_pretrained(lm_dir), out)
    return Path(out)


def add_lm_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sentences", required=True, help="training sentences (JSON lines from `train sentences`)")
    p.add_argument("--out", required=True)
    for field, default in asdict(LmOptions()).items():
        p.add_argument(f"--{field.replace('_', '-')}", type=type(default), default=default)


def run_lm(args: argparse.Namespace) -> int:
    options = LmOptions(**{f: getattr(args, f) for f in asdict(LmOptions())})
    sentences = [(s.text, s.cue) for s in read_sentences(args.sentences)]
    model, tokenizer, report = train_lm(sentences, options)
    out = Path(args.out)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(out)
    (out / "metrics.json").write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k != "options"}))
    return 0


def add_assemble_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--asr", required=True, help="CTC recogniser folder (its encoder is reused)")
    p.add_argument("--lm", required=True, help="chat LM folder from pretrain-lm")
    p.add_argument("--out", required=True)
    p.add_argument("--adapter-inner-dim", type=int, default=256)


def run_assemble(args: argparse.Namespace) -> int:
    print(assemble(args.asr, args.lm, args.out, args.adapter_inner_dim))
    return 0
