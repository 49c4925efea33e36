"""Manifests: JSON lines with at least `audio` and `text`, read lazily and checked line by line.

Training manifests hold millions of lines, so nothing here keeps more than one line in memory.
A malformed line (bad JSON, a missing key, an unknown emotion label) is a bug in the data that no
amount of training fixes, so it raises with the file, the line number and the fix; unreadable
audio, by contrast, is counted and skipped where the audio is decoded (see data.py).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from blsp_emo.emotion import EMOTIONS

RAW_KEYS = ("audio", "text")  # what every manifest row has (docs/paper.md §3.2)
TEACHER_KEYS = (*RAW_KEYS, "output", "early_stop")  # what `python -m train teacher` adds


class ManifestError(ValueError):
    """A manifest line cannot be used; the message names the file, the line and what to fix."""


@dataclass(frozen=True)
class Row:
    """One manifest line: where it came from and its fields."""

    path: Path
    line: int  # 1-based, for messages
    fields: dict

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"

    @property
    def emotion(self) -> str:
        """The row's emotion label, "" when it has none (ASR data; stage-1 teacher output)."""
        return self.fields.get("emotion") or ""


def read_rows(paths: Sequence[str | Path], required: Sequence[str] = RAW_KEYS) -> Iterator[Row]:
    """Rows of every manifest in order, each checked for `required` keys and a known emotion.

    Relative audio paths are resolved against the manifest's folder (a manifest moves with its
    clips) and returned absolute, so rows written elsewhere (teacher output) still point at them.
    """
    for path in map(Path, paths):
        if not path.is_file():
            raise ManifestError(f"manifest {path} does not exist")
        with path.open(encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    yield _row(path, number, line, required)


@dataclass(frozen=True)
class RowPlace:
    """Where a row's line starts: enough to read that one row again without reading the others."""

    file: int  # index into the manifest list
    offset: int  # byte offset of the line
    line: int  # 1-based, for messages


def row_places(paths: Sequence[str | Path]) -> list[RowPlace]:
    """The place of every non-empty line of every manifest: 24 bytes a row in a tuple, so a
    1.9M-row corpus indexes in tens of megabytes and can be shuffled as a whole."""
    places = []
    for file, path in enumerate(map(Path, paths)):
        if not path.is_file():
            raise ManifestError(f"manifest {path} does not exist")
        with path.open("rb") as f:
            offset = 0
            for number, line in enumerate(f, 1):
                if line.strip():
                    places.append(RowPlace(file, offset, number))
                offset += len(line)
    return places


class RowReader:
    """Rows by place (from `row_places` over the same paths), checked like `read_rows`', each
    manifest opened once for the reader's life."""

    def __init__(self, paths: Sequence[str | Path], required: Sequence[str] = RAW_KEYS):
        self.paths, self.required = [Path(p) for p in paths], tuple(required)
        self._files: dict[int, object] = {}

    def __call__(self, place: RowPlace) -> Row:
        f = self._files.get(place.file)
        if f is None:
            f = self._files[place.file] = self.paths[place.file].open("rb")
        f.seek(place.offset)
        return _row(self.paths[place.file], place.line, f.readline().decode("utf-8"), self.required)

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()


def _row(path: Path, number: int, line: str, required: Sequence[str]) -> Row:
    where = f"{path}:{number}"
    try:
        fields = json.loads(line)
    except json.JSONDecodeError as e:
        raise ManifestError(f"{where}: not a JSON object ({e.msg}); one JSON object per line") from e
    if not isinstance(fields, dict):
        raise ManifestError(f"{where}: expected a JSON object, got {type(fields).__name__}")
    missing = [key for key in required if key not in fields]
    if missing:
        hint = " (run `python -m train teacher` on the raw manifest first)" if "output" in missing else ""
        raise ManifestError(f"{where}: missing keys {missing}{hint}")
    emotion = fields.get("emotion") or ""
    if emotion and emotion not in EMOTIONS:
        # The released repo never shows how corpus labels map to the five classes (docs/paper.md §9);
        # map them when building the manifest rather than let a typo train as "no label".
        raise ManifestError(
            f"{where}: emotion {emotion!r} is not one of {EMOTIONS}; map it to one of them or leave it empty"
        )
    audio = Path(str(fields["audio"])).expanduser()
    if not audio.is_absolute():
        fields = {**fields, "audio": os.path.abspath(path.parent / audio)}
    return Row(path, number, fields)


def count_rows(paths: Sequence[str | Path], required: Sequence[str] = RAW_KEYS) -> int:
    """Check every line (JSON and keys, no audio) and count them: a cheap pass before a long run."""
    return sum(1 for _ in read_rows(paths, required))
