"""Running a study: consent, a rater's plan, each trial's two blind replies, and the submission.

`StudyRunner` is what the Rate tab and its API call; it holds read-only models, the config and
the store, and no rater state of its own: a rater is an unguessable id whose plan is in the
database, so a rater survives a server restart. Replies to configured clips are decoded greedily,
so each (clip, system) reply is computed once per process and shared by every rater.

What a rater sends is checked against what the server handed out (see `StudyStore.submit_issued`):
a trial is issued when shown, its clips must be reported played no sooner than they last, and
`StudyLimits` bounds how fast one rater rates and how many plans one address begins.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import random
import secrets
import threading
import time
from collections import defaultdict, deque
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from blsp_emo.audio import SAMPLE_RATE, load_audio
from blsp_emo.study.assign import OWN_RECORDING, Trial
from blsp_emo.study.config import StudyConfig
from blsp_emo.study.store import RateLimited, Rating, StudyRefusal, StudyStore
from blsp_emo.systems import Reply, SpokenDialogueSystem
from blsp_emo.tts import NullSynthesizer, SpeechSynthesizer, style_for

Speech = tuple[int, np.ndarray]  # (sample rate, (T,) float32)


@dataclass(frozen=True)
class TrialView:
    """What a rater sees for one trial: no system names until the ratings are in."""

    rater_id: str
    index: int
    total: int
    stimulus: str
    stimulus_audio: str | None  # the configured clip's path; None for the rater's own recording
    reply_a: str
    reply_b: str
    speech_a: Speech | None
    speech_b: Speech | None
    shown_at: float  # when the server first issued this trial (the stored one; never the client's)
    key: str  # the idempotency key this trial's submission carries, issued by the server
    listen_seconds: float = 0.0  # how long its clips last: 'played' earlier than this after shown_at is refused

    def to_json(self) -> dict:
        return {
            "trial": self.index,
            "of": self.total,
            "stimulus": self.stimulus,
            "reply_a": self.reply_a,
            "reply_b": self.reply_b,
            "shown_at": self.shown_at,
            "key": self.key,
            "listen_seconds": self.listen_seconds,
        }


INVITE_ENV = "BLSP_EMO_STUDY_INVITE"
SUBMIT_INTERVAL_ENV = "BLSP_EMO_STUDY_SUBMIT_INTERVAL"
BEGINS_PER_HOUR_ENV = "BLSP_EMO_STUDY_BEGINS_PER_HOUR"


@dataclass(frozen=True)
class StudyLimits:
    """What a rater must show to take part, and how fast.

    `submit_interval`: a rater's ratings at least this many seconds apart (a person listens to a
    clip and gives five answers per trial; 2 s stops only scripts). `begins_per_hour`: new plans
    one client address may begin in an hour (0: no cap); 120 lets a class behind one NAT take part
    and bounds a script to two fake raters a minute. `invite`: a code a rater must give to begin.
    """

    submit_interval: float = 2.0
    begins_per_hour: int = 120
    invite: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ, invite: str | None = None) -> StudyLimits:
        try:
            interval = float(environ.get(SUBMIT_INTERVAL_ENV, cls.submit_interval))
            begins = int(environ.get(BEGINS_PER_HOUR_ENV, cls.begins_per_hour))
        except ValueError as e:
            raise ValueError(f"{SUBMIT_INTERVAL_ENV} / {BEGINS_PER_HOUR_ENV}: a number, please ({e})") from e
        if interval < 0 or begins < 0:
            raise ValueError(f"{SUBMIT_INTERVAL_ENV} and {BEGINS_PER_HOUR_ENV} must be ≥ 0")
        return cls(interval, begins, invite or environ.get(INVITE_ENV) or None)


@dataclass(frozen=True)
class Submitted:
    """Made only once this rater's rating of this trial is stored, so the names reveal nothing new."""

    stored: bool  # False: this trial was already recorded (a double click or a retry)
    system_a: str
    system_b: str
    next_trial: int | None  # None when the study is finished

    def to_json(self) -> dict:
        return {
            "status": "stored" if self.stored else "duplicate",
            "a": self.system_a,
            "b": self.system_b,
            "next_trial": self.next_trial,
        }


class ReplyCache:
    """One greedy reply per (clip, system), computed on first use; concurrent first uses wait for it."""

    def __init__(self):
        self._replies: dict[tuple[str, str], tuple[Reply, Speech | None]] = {}
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._guard = threading.Lock()

    def get(self, key: tuple[str, str], make):
        if key in self._replies:
            return self._replies[key]
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if key not in self._replies:
                self._replies[key] = make()
            return self._replies[key]


class StudyRunner:
    """Consent → plan → trials → submissions for one study, over loaded `systems` and a `store`."""

    def __init__(
        self,
        config: StudyConfig,
        systems: Mapping[str, SpokenDialogueSystem],
        store: StudyStore,
        synthesizer: SpeechSynthesizer | None = None,
        limits: StudyLimits | None = None,
    ):
        config.require_systems(systems)
        self.config, self.store = config, store
        self.limits = limits or StudyLimits()
        self._begins: dict[str, deque] = defaultdict(deque)  # client address -> times of new plans (memory only)
        self._begins_lock = threading.Lock()
        self.systems = {name: systems[name] for name in config.systems}
        self.synthesizer = synthesizer if config.spoken_replies and synthesizer else NullSynthesizer()
        self.revisions = {name: s.revision() for name, s in self.systems.items()}
        self.cache = ReplyCache()
        self._clips = {
            s.id: load_audio(
                s.audio,
                max_seconds=min(x.window_seconds for x in self.systems.values()),
                name=f"study clip {s.id} ({s.audio.name})",
            )
            for s in config.stimuli
        }

    def warm(self) -> None:
        """Compute every (clip, system) reply now, so that the first raters do not wait for them."""
        for stimulus in self.config.stimuli:
            for name in self.config.systems:
                self.cache.get((stimulus.id, name), lambda s=stimulus.id, n=name: self._answer(n, self._clips[s]))

    @property
    def speaks(self) -> bool:
        return not isinstance(self.synthesizer, NullSynthesizer)

    def begin(
        self,
        consent: bool,
        keep_audio: bool = False,
        rng: random.Random | None = None,
        login: str | None = None,
        client: str | None = None,
        invite: str | None = None,
    ) -> tuple[str, list[Trial]]:
        """A rater and their plan; refused without consent, without the invitation code when one is
        set, and past `limits.begins_per_hour` new plans from one `client` address.

        Anonymous raters get a random id. With a `login` (the Space's sign-in) the id is a hash of it
        and the study, so the same person resumes their own plan instead of taking the study twice,
        and the name itself is not stored. The address is counted in memory only, never stored.
        """
        if not consent:
            raise PermissionError("please read what is stored and tick 'I agree' to take part")
        expected = self.limits.invite
        if expected and not (invite and hmac.compare_digest(invite.strip().encode(), expected.encode())):
            raise StudyRefusal("this study needs an invitation code: give the one you were sent")
        if login:
            rater_id = "login-" + hashlib.sha256(f"{self.config.id}\n{login}".encode()).hexdigest()[:20]
        else:
            rater_id = secrets.token_urlsafe(12)  # random: it names nobody, and cannot be guessed by other raters
        if not (login and self.store.plan(rater_id)):  # resuming one's own plan begins nothing new
            self._count_begin(client)
        keep = bool(keep_audio and self.config.allow_own_recording)
        return rater_id, self.store.begin_rater(self.config, rater_id, keep, rng)

    def _count_begin(self, client: str | None, now: float | None = None) -> None:
        cap = self.limits.begins_per_hour
        if not cap:
            return
        now = time.monotonic() if now is None else now
        with self._begins_lock:
            times = self._begins[client or "?"]
            while times and now - times[0] >= 3600:
                times.popleft()
            if len(times) >= cap:
                wait = 3600 - (now - times[0])
                raise RateLimited(
                    f"too many new raters from your address (at most {cap} an hour); "
                    f"try again in {max(1, round(wait / 60))} min"
                )
            times.append(now)

    def trial(self, rater_id: str, index: int) -> Trial:
        plan = self.store.plan(rater_id)
        if not plan:
            raise LookupError(f"unknown rater {rater_id!r}: start the study (consent) first")
        if not 0 <= index < len(plan):
            raise LookupError(f"trial {index} is outside this rater's plan (0–{len(plan) - 1})")
        return plan[index]

    def view(self, rater_id: str, index: int, own_audio=None) -> TrialView:
        """Trial `index` of a rater: the two replies as A and B (on the rater's recording when given)."""
        trial = self.trial(rater_id, index)
        if own_audio is not None:
            if not self.config.allow_own_recording:
                raise PermissionError(f"study {self.config.id!r} does not take own recordings")
            wave = load_audio(
                own_audio, max_seconds=min(s.window_seconds for s in self.systems.values()), name="your recording"
            )
            a, b = (self._answer(trial.system(side), wave) for side in "AB")
            stimulus, shown = OWN_RECORDING, None
        else:
            a, b = (
                self.cache.get(
                    (trial.stimulus, trial.system(side)),
                    lambda side=side: self._answer(trial.system(side), self._clips[trial.stimulus]),
                )
                for side in "AB"
            )
            stimulus, shown = trial.stimulus, str(self.config.stimulus(trial.stimulus).audio)
        total = len(self.store.plan(rater_id))
        speeches = [a[1], b[1]]
        listen = max(
            [0.0 if own_audio is not None else len(self._clips[trial.stimulus]) / SAMPLE_RATE]
            + [len(x[1]) / x[0] for x in speeches if x is not None]
        )
        key, shown_at = self.store.issue(rater_id, index, stimulus, listen, reissue=own_audio is not None)
        return TrialView(
            rater_id, index, total, stimulus, shown, a[0].text, b[0].text, a[1], b[1], shown_at, key, round(listen, 3)
        )

    def issued_view(self, rater_id: str, index: int) -> TrialView:
        """Trial `index` as it was handed out (for a submission through the API); refused if it never was."""
        trial = self.trial(rater_id, index)
        issued = self.store.issued(rater_id, index)
        if issued is None:
            raise StudyRefusal(f"trial {index} was never shown to this rater: fetch it first")
        if issued["issued_stimulus"] == OWN_RECORDING:
            raise StudyRefusal(f"trial {index} was answered on your own recording: submit it on the page")
        (a, sa), (b, sb) = (
            self.cache.get(
                (trial.stimulus, trial.system(side)),
                lambda side=side: self._answer(trial.system(side), self._clips[trial.stimulus]),
            )
            for side in "AB"
        )
        return TrialView(
            rater_id,
            index,
            len(self.store.plan(rater_id)),
            trial.stimulus,
            str(self.config.stimulus(trial.stimulus).audio),
            a.text,
            b.text,
            sa,
            sb,
            issued["issued_at"],
            issued["issued_key"],
            issued["listen_seconds"] or 0.0,
        )

    def played(self, rater_id: str, index: int, key: str) -> float:
        """The rater played trial `index`'s clips to the end; refused before they could have (see the store)."""
        self.trial(rater_id, index)
        return self.store.mark_played(rater_id, index, key)

    def _answer(self, name: str, wave: np.ndarray) -> tuple[Reply, Speech | None]:
        reply = self.systems[name].respond(audio=wave, options=self.config.options)
        speech = self.synthesizer.synthesize(reply.text, style_for(reply.emotion)) if reply.text else None
        return reply, speech

    def submit(
        self,
        view: TrialView,
        scores: Mapping[str, int],
        preference: str,
        reason: str = "",
        listened: bool | None = None,
        own_audio=None,
    ) -> Submitted:
        """Store one trial's ratings (`scores`: empathy_a, quality_a, empathy_b, quality_b) and reveal A and B.

        Only as the server handed the trial out: `view.key` must be the issued key, the shown-at
        time is the issue's and the listened flag is whether the server saw the clips played
        (`listened` is ignored; it is kept for old callers). Raises `StudyRefusal` otherwise, with
        nothing stored and no names.
        """
        del listened  # the server's record decides
        trial = self.trial(view.rater_id, view.index)
        audio_path = None
        if view.stimulus == OWN_RECORDING and own_audio is not None and self.store.consented_audio(view.rater_id):
            issued = self.store.issued(view.rater_id, view.index)  # keep nothing for a submission to be refused
            if issued and issued["issued_key"] == view.key and not self.store.has_rating(view.rater_id, view.index):
                audio_path = self._keep(view, own_audio)
        rating = Rating(
            view.key,
            self.config.id,
            view.rater_id,
            view.index,
            view.stimulus,
            trial.system_a,
            trial.system_b,
            trial.swapped,
            *(_score(scores, k) for k in ("empathy_a", "quality_a", "empathy_b", "quality_b")),
            preference,
            (reason or "").strip()[:2000],
            view.reply_a,
            view.reply_b,
            self.revisions[trial.system_a],
            self.revisions[trial.system_b],
            0.0,  # replaced by the issue's time in the store
            time.time(),
            False,  # replaced by the store's record of the play
            audio_path,
        )
        stored = self.store.submit_issued(rating, min_interval=self.limits.submit_interval)
        done = self.store.submitted_trials(view.rater_id)
        later = [t.index for t in self.store.plan(view.rater_id) if t.index not in done]
        return Submitted(stored, trial.system_a, trial.system_b, later[0] if later else None)

    def _keep(self, view: TrialView, own_audio) -> str:
        folder = self.store.path.parent / "audio"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{view.rater_id}-{view.index}.wav"
        sf.write(path, load_audio(own_audio, max_seconds=600, name="your recording"), SAMPLE_RATE)
        return str(path)


def _score(scores: Mapping[str, int], key: str) -> int:
    value = scores.get(key)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{key} must be a whole number 0–10, got {value!r}")
    return value
