"""BLSP-Emo: an empathetic speech-language model (arXiv 2406.03872), its baselines and tools.

    from blsp_emo import load_system, GenerationOptions
    reply = load_system("blsp-emo", model="path/to/model").respond("clip.wav")
    reply.emotion, reply.emotion_scores, reply.text
"""

from .audio import AudioError, load_audio
from .checkpoint import ModelNotFoundError, load_model
from .config import BlspEmoConfig
from .emotion import EMOTIONS
from .generation import GenerationOptions
from .model import BlspEmoModel
from .prompts import Turn
from .systems import Reply, SpokenDialogueSystem, Timings, available_systems, load_system

__version__ = "0.1.0"

__all__ = [
    "EMOTIONS", "AudioError", "BlspEmoConfig", "BlspEmoModel", "GenerationOptions", "ModelNotFoundError",
    "Reply", "SpokenDialogueSystem", "Timings", "Turn", "available_systems", "load_audio", "load_model",
    "load_system", "__version__",
]
