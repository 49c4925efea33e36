"""BLSP-Emo: an empathetic speech-language model (arXiv 2406.03872), its baselines and tools.

    from blsp_emo import load_system, GenerationOptions
    reply = load_system("blsp-emo", model="path/to/model").respond("clip.wav")
    reply.emotion, reply.emotion_scores, reply.text

The names below are imported when first used: a web server whose models run in worker processes
(workers.py) then never imports torch or transformers itself, and starts seconds sooner.
"""

from importlib import import_module

__version__ = "0.1.0"

_HOMES = {  # name: the module that defines it
    "AudioError": "audio",
    "load_audio": "audio",
    "ModelNotFoundError": "checkpoint",
    "load_model": "checkpoint",
    "BlspEmoConfig": "config",
    "EMOTIONS": "emotion",
    "GenerationOptions": "options",
    "BlspEmoModel": "model",
    "Turn": "prompts",
    "Reply": "systems",
    "SpokenDialogueSystem": "systems",
    "Timings": "systems",
    "available_systems": "systems",
    "load_system": "systems",
}

__all__ = [*_HOMES, "__version__"]


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'blsp_emo' has no attribute {name!r}")
    value = getattr(import_module(f".{_HOMES[name]}", __name__), name)
    globals()[name] = value  # once imported, a plain attribute
    return value
