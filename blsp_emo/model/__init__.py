"""The speech-language model: Whisper encoder -> adapter -> LLM with an audio-scoped LoRA, and an emotion head.

One module per piece: `config` (sizes), `encoder`, `adapter`, `lora`, `model` (the composite),
`tokenizer` and `processor` (text and audio into the model's inputs), `checkpoint` (save and load).
"""
