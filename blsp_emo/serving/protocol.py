"""What the pool (`blsp_emo.serving.pool`) and its worker processes (`blsp_emo.serving.workers`) share.

The configuration a worker is started with (`WorkerSpec`), what it reports of each system it loaded
(`SystemInfo`), and the messages of a call. Messages are pickled tuples on one connection:

    worker -> pool, once per connection:  ("ready", pid, infos, notes)
    worker -> pool, instead, once:        ("failed", pid, message), when its models cannot load
                                          for a reason a line says (a damaged weight file)
    pool -> worker:                       ("stream", name, audio, history, options, text), ("cancel",)
    worker -> pool, for a call:           ("reply", reply)..., then one of TERMINAL:
                                          ("end", None), ("error", exception), ("cancelled", None)
    pool -> worker, after a reply:        ("evidence", name, clip, emotion_scores, transcript)
    worker -> pool, its one answer:       ("evidence", dict), the evidence behind the emotion
                                          (blsp_emo.serving.evidence; a failure is {"error": line})
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from blsp_emo.systems.base import SpokenDialogueSystem

TERMINAL = ("end", "error", "cancelled")  # the messages that end a call


class WorkerError(RuntimeError):
    """A model worker did not start, or stopped."""


@dataclass(frozen=True)
class WorkerSpec:
    """What every worker loads (the arguments of `load_systems`) and how it runs."""

    names: tuple[str, ...]
    model: str | None = None
    asr: str | None = None
    ser: str | None = None
    llm: str | None = None
    device: str | None = None
    dtype: str | None = None
    max_batch: int = 0
    threads: int = 0  # torch threads in each worker; 0: torch's default
    slots: int = 2  # calls one worker answers at once
    stream_interval: float = 0.0  # seconds between the growing replies a call sends back (0: every token)

    def __post_init__(self):
        if self.slots < 1 or self.threads < 0:
            raise ValueError(f"slots must be >= 1 and threads >= 0, got {self.slots} and {self.threads}")

    def parts(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in ("names", "threads", "slots", "stream_interval")}


@dataclass(frozen=True)
class SystemInfo:
    """What the server needs of a system that runs elsewhere."""

    name: str
    description: str
    window_seconds: float
    emotion_source: str | None
    revision: str  # the fingerprint of its weights, taken where they are

    @classmethod
    def of(cls, system: SpokenDialogueSystem) -> SystemInfo:
        return cls(system.name, system.description, system.window_seconds, system.emotion_source, system.revision())
