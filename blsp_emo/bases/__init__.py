"""Pretrained bases the model is built on: readers for the formats they ship in (CTranslate2 Whisper, GGUF/safetensors Llama-family LLMs), converted once to safetensors."""
