"""Sentences for the synthetic corpus: `python -m train sentences --n N --seed S --out FILE [--split eval]`.

Most sentences are built from templates whose words carry no emotion ("I picked up the letter from
the office this morning."), so in the speech corpus the tone is the only evidence of the emotion.
A minority (`--cue-fraction`, default 15 %) carry a lexical cue for one of the four marked emotions
("How dare you read my letters?" angry), so a text-only model has something to use where words do
speak; `python -m train synth` renders each of those mostly in the matching tone.

The file is JSON lines, one sentence each: `{"id": "train00006", "text": "...", "cue": "angry"}`
(`cue` is null for plain sentences). `python -m train synth --sentences` also reads plain text,
one sentence per line, with no cues.

Train and eval sentences are disjoint for every n and seed: a sentence belongs to the split named
by a hash of its words (`split_of`), and each split only keeps its own. Generation is deterministic
and prefix-stable: the first k sentences of `--n 1000` are those of `--n k` (same seed and split).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import random
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from blsp_emo.emotion import EMOTIONS

SPLITS = ("train", "eval")
EVAL_SHARE = 10  # one sentence in EVAL_SHARE (by hash) is an evaluation sentence
CUE_EMOTIONS = tuple(e for e in EMOTIONS if e != "neutral")  # neutral is the unmarked plain sentence
# What the ASR later learns to write (letters, apostrophes, spaces) plus commas and one final mark.
ALLOWED = re.compile(r"[A-Z][A-Za-z' ,]*[a-z][.?]")


class SentenceError(ValueError):
    """Sentences cannot be generated or read as asked; the message says what to change."""


@dataclass(frozen=True)
class Sentence:
    id: str  # names the clips made from it: {id}_{voice}_{emotion}.wav
    text: str  # exactly what is spoken, and the transcript
    cue: str | None = None  # the emotion its words express, None when they express none


# --- plain sentences: no emotion in the words ---------------------------------------------------

# fmt: off
SUBJECTS = (
    "I", "We", "She", "He", "They", "My brother", "My sister", "Our neighbour", "The manager", "The driver",
    "My colleague", "Her father", "His mother", "The teacher", "Our landlord", "The new assistant", "My cousin",
    "The technician", "The receptionist", "Your friend",
)
ASKED = ("you", *SUBJECTS[2:])  # "Did I ...?" and "Did we ...?" rarely ask anything
# (past, base) forms: the past tense agrees with every subject, the base form follows "did"/"will".
VERBS_ANY = (
    ("picked up", "pick up"), ("dropped off", "drop off"), ("moved", "move"), ("checked", "check"), ("opened", "open"),
    ("carried", "carry"), ("brought", "bring"), ("found", "find"), ("packed", "pack"), ("sorted", "sort"),
    ("labelled", "label"), ("counted", "count"), ("returned", "return"), ("collected", "collect"),
    ("delivered", "deliver"), ("weighed", "weigh"),
)
VERBS_PAPER = (
    ("printed", "print"), ("signed", "sign"), ("copied", "copy"), ("scanned", "scan"), ("filed", "file"),
    ("read", "read"), ("sent", "send"), ("stamped", "stamp"),
)
# (noun phrase, is plural, is paper): paper things take VERBS_PAPER too.
OBJECTS = (
    ("the letter", False, True), ("the report", False, True), ("the forms", True, True), ("the receipts", True, True),
    ("the blue folder", False, True), ("the invoice", False, True), ("the schedule", False, True),
    ("the manual", False, True), ("the envelopes", True, True), ("the catalogue", False, True),
    ("the notes", True, True), ("the order list", False, True), ("the package", False, False),
    ("the spare keys", True, False), ("the boxes", True, False), ("the samples", True, False),
    ("the grey suitcase", False, False), ("the chairs", True, False), ("the toolbox", False, False),
    ("the cables", True, False), ("the parcel", False, False), ("the umbrella", False, False),
    ("the laptop", False, False), ("the paint tins", True, False),
)
PLACES = (
    "from the office", "at the front desk", "in the hallway", "near the station", "to the library",
    "from the post office", "in the kitchen", "on the second floor", "at the bank", "in the garage",
    "next to the printer", "at the corner shop", "by the window", "in the meeting room", "at the school",
    "to the warehouse", "in the car", "on the bottom shelf", "at reception", "in the basement", "to the town hall",
    "at the market", "in the storage room", "near the bus stop", "by the back door", "upstairs", "across the street",
    "at the depot",
)
TIMES_PAST = (
    "today", "this morning", "yesterday", "last week", "on Monday", "on Tuesday afternoon", "after lunch",
    "before the meeting", "at nine o'clock", "this afternoon", "last night", "earlier", "on Friday", "at noon",
    "around ten", "on Wednesday", "an hour ago",
)
TIMES_FUTURE = (
    "tomorrow", "next week", "on Monday", "after lunch", "later today", "on Thursday morning", "before the meeting",
    "at nine o'clock", "this afternoon", "at noon", "next month", "on Saturday",
)
EVENTS = (
    "meeting", "bus", "class", "delivery", "train", "appointment", "inspection", "lecture", "interview", "shift",
    "ferry", "rehearsal", "workshop", "tour",
)
CLOCK = (
    "at nine", "at half past two", "at a quarter to four", "at noon", "on Wednesday", "after lunch", "next week",
    "at seven thirty", "at ten past eight", "on the first of the month", "at six",
)
# fmt: on


def _plain(rng: random.Random) -> str:
    """One plain sentence from a randomly chosen template."""
    subject, asked = rng.choice(SUBJECTS), _lower(rng.choice(ASKED))
    noun, plural, paper = rng.choice(OBJECTS)
    past, base = rng.choice(VERBS_ANY + VERBS_PAPER if paper else VERBS_ANY)
    place, event = rng.choice(PLACES), rng.choice(EVENTS)
    past_time, future_time, clock = rng.choice(TIMES_PAST), rng.choice(TIMES_FUTURE), rng.choice(CLOCK)
    where = _where(place)
    templates = (
        f"{subject} {past} {noun} {place} {past_time}.",
        f"Did {asked} {base} {noun} {place} {past_time}?",
        f"{subject} will {base} {noun} {place} {future_time}.",
        f"{noun.capitalize()} {'are' if plural else 'is'} {where}.",
        f"{'Are' if plural else 'Is'} {noun} {where} {future_time}?",
        f"{subject} said the {event} starts {clock}.",
        f"When does the {event} start {future_time}?",
    )
    return rng.choice(templates)


def _where(place: str) -> str:
    """Where something is, from where it was taken: "from the office" -> "at the office"."""
    for motion in ("from ", "to "):
        if place.startswith(motion):
            return "at " + place[len(motion) :]
    return place


def _lower(phrase: str) -> str:
    return phrase if phrase.split(" ")[0] in ("I", "I'm", "I've") else phrase[0].lower() + phrase[1:]


# --- cue sentences: the words name or imply the emotion ------------------------------------------

# Each template's {} takes one filler; an opening and a closing address multiply the variety.
# fmt: off
CUES: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    "happy": (
        ("I can't believe we won the {}", ("prize", "contest", "final", "lottery", "match", "award", "raffle")),
        ("This is the best {} I've ever had", ("day", "birthday", "holiday", "meal", "present", "weekend", "news")),
        ("I'm so happy you came to the {}", ("party", "wedding", "picnic", "concert", "dinner", "celebration")),
        ("We finally got the {} and I'm thrilled", ("house", "job", "tickets", "puppy", "results", "scholarship")),
        ("What a wonderful {}, thank you so much", ("surprise", "gift", "evening", "idea", "song", "letter")),
        ("I'm delighted, the {} went perfectly", ("wedding", "interview", "trip", "show", "launch", "exam")),
    ),
    "angry": (
        ("This is so unfair, I'm furious about the {}", ("delay", "bill", "noise", "decision", "mess", "fine", "rent")),
        ("How dare you {}", (
            "lie to me", "read my letters", "take my car", "ignore me like that", "break your promise",
            "touch my things",
        )),
        ("I'm sick of your {}", ("excuses", "lies", "attitude", "complaints", "mess", "lateness")),
        ("Stop {} right now, I've had enough", (
            "shouting", "interrupting me", "lying", "wasting my time", "touching that", "blaming me",
        )),
        ("I'm so angry they {} again", (
            "cancelled the order", "raised the rent", "lost my bag", "blocked the driveway", "ignored my calls",
            "broke the gate",
        )),
        ("Don't you dare {}", (
            "walk away from me", "raise your voice at me", "call me a liar", "slam that door", "laugh at me",
        )),
    ),
    "sad": (
        ("I miss my {} so much", ("grandmother", "old dog", "best friend", "father", "home town", "brother", "mother")),
        ("Nobody came to my {}, I feel so alone", ("party", "birthday", "show", "wedding", "exhibition", "graduation")),
        ("It hurts that my {} never called me back", ("sister", "son", "daughter", "old friend", "father", "partner")),
        ("Our {} died last night and I can't stop crying", (
            "dog", "cat", "old horse", "rabbit", "parrot", "grandfather",
        )),
        ("I failed the {} again and I feel hopeless", (
            "exam", "driving test", "interview", "audition", "course", "test",
        )),
        ("I'm heartbroken, they closed the {} where we met", (
            "cafe", "library", "park", "bookshop", "cinema", "school",
        )),
    ),
    "surprise": (
        ("Wait, you're telling me the {} is already here", ("package", "bus", "new manager", "snow", "baby", "storm")),
        ("I had no idea you could {}", (
            "play the piano", "speak Japanese", "fly a plane", "juggle", "sing like that", "cook so well",
        )),
        ("Really, the {} was moved to tonight", ("concert", "meeting", "wedding", "party", "game", "flight")),
        ("Oh wow, I never expected to see you {}", (
            "here", "at the airport", "in this town", "at the concert", "on the news", "so soon",
        )),
        ("No way, {} is getting married", (
            "my brother", "your cousin", "the manager", "our teacher", "your sister", "my landlord",
        )),
        ("What, the {} closed down overnight", ("bakery", "bank", "cinema", "bookshop", "factory", "old pub")),
        ("I'm so surprised you {}", (
            "finished already", "remembered my name", "came all this way", "knew about that", "found it so fast",
            "got here first",
        )),
        ("I didn't expect the {} to be so huge", ("crowd", "house", "cake", "garden", "dog", "queue")),
        ("I'm astonished, the {} actually worked", (
            "old radio", "plan", "new recipe", "magic trick", "shortcut", "experiment",
        )),
    ),
}
# fmt: on
OPENINGS = ("", "Honestly, ", "You know, ", "Well, ", "Listen, ")
ADDRESSEES = ("", ", Sam", ", Maria", ", Tom", ", Priya", ", Alex", ", mum", ", Daniel", ", Grace", ", Leo")
# Templates that ask (whatever their wording) or open with their own interjection take no opening.
_QUESTIONS = ("How dare", "Wait, you're telling", "Really,", "No way,", "What,")
_INTERJECTIONS = (*_QUESTIONS, "Oh wow,")


def _cue_sentences(emotion: str) -> Iterator[str]:
    """Every cue sentence of `emotion`, in a fixed order."""
    for template, fillers in CUES[emotion]:
        mark = "?" if template.startswith(_QUESTIONS) else "."
        openings = ("",) if template.startswith(_INTERJECTIONS) else OPENINGS
        for opening, name, filler in itertools.product(openings, ADDRESSEES, fillers):
            body = template.format(filler)
            yield (opening + _lower(body) if opening else body) + name + mark


# --- splits and generation --------------------------------------------------------------------


def split_of(text: str) -> str:
    """The split a sentence belongs to, from a hash of its lower-cased words (punctuation ignored).

    A statement and the question with the same words share a split, so eval never hears a
    training sentence with only its final mark changed.
    """
    key = " ".join(re.findall(r"[a-z']+", text.lower()))
    digest = int(hashlib.sha1(key.encode()).hexdigest()[:8], 16)
    return "eval" if digest % EVAL_SHARE == 0 else "train"


def generate(n: int, seed: int = 0, split: str = "train", cue_fraction: float = 0.15) -> list[Sentence]:
    """`n` distinct sentences of `split`, `floor(n * cue_fraction)` of them with a lexical cue.

    Cue sentences sit at evenly spaced positions and cycle through happy, angry, sad, surprise,
    so every prefix keeps the fraction and the balance.
    """
    _check(n, split, cue_fraction)
    plain = _plain_stream(seed, split)
    cues = {emotion: _cue_stream(emotion, seed, split) for emotion in CUE_EMOTIONS}
    out, n_cues = [], 0
    for i in range(n):
        if int((i + 1) * cue_fraction) > int(i * cue_fraction):
            emotion = CUE_EMOTIONS[n_cues % len(CUE_EMOTIONS)]
            text = next(cues[emotion], None)
            if text is None:
                raise SentenceError(
                    f"the {split} split has no more {emotion} cue sentences after {n_cues} cue sentences in all "
                    f"(n={n}, cue fraction {cue_fraction}); lower --cue-fraction or --n"
                )
            out.append(Sentence(f"{split}{i:05d}", text, emotion))
            n_cues += 1
        else:
            out.append(Sentence(f"{split}{i:05d}", next(plain)))
    return out


def _check(n: int, split: str, cue_fraction: float) -> None:
    if n < 1:
        raise SentenceError(f"--n must be at least 1, got {n}")
    if split not in SPLITS:
        raise SentenceError(f"unknown split {split!r}; choose one of {SPLITS}")
    if not 0.0 <= cue_fraction <= 1.0:
        raise SentenceError(f"--cue-fraction must be within [0, 1], got {cue_fraction}")


def _plain_stream(seed: int, split: str) -> Iterator[str]:
    rng = random.Random(f"plain|{seed}|{split}")
    seen: set[str] = set()
    misses = 0
    while misses < 100_000:  # the space holds millions; this only stops a broken template set
        text = _plain(rng)
        if text in seen or split_of(text) != split:
            misses += 1
            continue
        seen.add(text)
        misses = 0
        yield text
    raise SentenceError(f"ran out of distinct {split} plain sentences after {len(seen)}; lower --n")


def _cue_stream(emotion: str, seed: int, split: str) -> Iterator[str]:
    pool = [text for text in _cue_sentences(emotion) if split_of(text) == split]
    random.Random(f"cue|{seed}|{split}|{emotion}").shuffle(pool)
    return iter(pool)


# --- files --------------------------------------------------------------------------------------


def write_sentences(sentences: Sequence[Sentence], path: str | Path) -> None:
    """JSON lines `{"id", "text", "cue"}`, one per sentence."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for s in sentences:
            f.write(json.dumps({"id": s.id, "text": s.text, "cue": s.cue}) + "\n")


def read_sentences(path: str | Path) -> list[Sentence]:
    """A sentences file: JSON lines as written by `write_sentences`, or plain text one per line.

    Plain lines get ids `s00000`, `s00001`, ... by line order and no cue.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sentences file {path} does not exist; make one with `python -m train sentences`")
    out = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            out.append(_parse_line(line.strip(), f"{path}:{number}", len(out)))
    if not out:
        raise SentenceError(f"{path} holds no sentences")
    ids = [s.id for s in out]
    if len(set(ids)) != len(ids):
        raise SentenceError(f"{path}: sentence ids repeat; each id names clip files, so make them unique")
    return out


def _parse_line(line: str, where: str, index: int) -> Sentence:
    if not line.startswith("{"):
        return Sentence(f"s{index:05d}", line)
    try:
        row = json.loads(line)
        sentence = Sentence(str(row["id"]), str(row["text"]), row.get("cue"))
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise SentenceError(f'{where}: expected {{"id": ..., "text": ..., "cue": ...}} ({e})') from e
    if sentence.cue is not None and sentence.cue not in EMOTIONS:
        raise SentenceError(f"{where}: cue {sentence.cue!r} is not one of {EMOTIONS} or null")
    return sentence


# --- command line -------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `python -m train sentences`."""
    parser.add_argument("--n", type=int, required=True, help="how many sentences")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="JSON lines file to write")
    parser.add_argument("--split", default="train", choices=SPLITS, help="eval sentences never occur in train")
    parser.add_argument("--cue-fraction", type=float, default=0.15, help="share with lexical emotion cues")


def run(args: argparse.Namespace) -> int:
    """Write the sentences file and print a one-line JSON summary."""
    sentences = generate(args.n, args.seed, args.split, args.cue_fraction)
    write_sentences(sentences, args.out)
    counts = {e: sum(s.cue == e for s in sentences) for e in CUE_EMOTIONS}
    print(json.dumps({"out": str(args.out), "split": args.split, "n": len(sentences), "cues": counts}))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m train.sentences", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (SentenceError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
