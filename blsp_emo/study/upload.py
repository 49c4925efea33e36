"""Optional: a periodic copy of the ratings export in a Hugging Face dataset repo (off by default).

A Space's disk can vanish with a restart unless a volume is mounted; `CommitScheduler` pushes the
export folder every few minutes from a background thread (the pattern of
`Wauplin/space_to_dataset_saver`). Switched on only by setting BLSP_EMO_STUDY_UPLOAD_REPO (and a
write token in HF_TOKEN, a Space secret).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from blsp_emo.study.store import StudyStore

REPO_ENV = "BLSP_EMO_STUDY_UPLOAD_REPO"
EVERY_ENV = "BLSP_EMO_STUDY_UPLOAD_EVERY"  # minutes


@dataclass(frozen=True)
class UploadSettings:
    repo_id: str
    every_minutes: float = 10.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> UploadSettings | None:
        """The settings when BLSP_EMO_STUDY_UPLOAD_REPO is set, else None (no upload)."""
        repo = environ.get(REPO_ENV, "").strip()
        if not repo:
            return None
        try:
            every = float(environ.get(EVERY_ENV, "10"))
        except ValueError:
            raise ValueError(f"{EVERY_ENV}={environ[EVERY_ENV]!r} is not a number of minutes") from None
        if not every > 0:
            raise ValueError(f"{EVERY_ENV} must be > 0 minutes, got {every}")
        return cls(repo, every)

    def scheduler_kwargs(self, folder: Path) -> dict:
        """`CommitScheduler` arguments: a private dataset repo, only the export file."""
        return {
            "repo_id": self.repo_id,
            "repo_type": "dataset",
            "folder_path": folder,
            "every": self.every_minutes,
            "path_in_repo": "ratings",
            "private": True,
            "allow_patterns": ["*.csv"],
        }


def start_upload(store: StudyStore, settings: UploadSettings):
    """Start pushing `store`'s export to the hub (needs the network and a write token)."""
    from huggingface_hub import CommitScheduler

    class ExportScheduler(CommitScheduler):
        def push_to_hub(self):
            with self.lock:  # the file is replaced atomically, under the scheduler's lock
                store.export_csv(self.folder_path / "ratings.csv")
            return super().push_to_hub()

    return ExportScheduler(**settings.scheduler_kwargs(store.path.parent / "upload"))
