"""What a microphone does to speech: level, room, noise and sample rate, drawn per clip.

No microphone records at one level, in one room, at one rate. A corpus rendered at one loudness
teaches a model that loudness is emotion (the first demo model did: the same happy clips turned
down to 25 % were heard as another emotion). So every training clip gets its own recording chain,
drawn from its name (the same seed gives the same files, whatever the order or the workers):

    speech -> room (reverberation) -> room noise at an SNR -> microphone gain -> the file's sample rate

The evaluation applies one fixed condition at a time (`EVAL_CONDITIONS`) to held-out clips, so
each is reported on its own. Nothing here normalises a clip: the level a clip ends at is its
emotion's loudness times the drawn gain, and loud clips clip as a recorder would (the PCM-16 file).
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from blsp_emo.audio import to_pcm16

NOISES = ("white", "pink", "brown")
RATES = (8000, 11025, 16000, 22050, 44100)


@dataclass(frozen=True)
class Acoustics:
    """One recording chain. The defaults change nothing (a dry, noiseless clip at 16 kHz)."""

    gain_db: float = 0.0  # microphone gain on top of the rendered level
    snr_db: float | None = None  # room noise, relative to the (reverberant) speech's power; None: none
    noise: str = "pink"  # spectrum of the noise: white, pink (1/f) or brown (1/f^2)
    rt60: float | None = None  # reverberation time in seconds; None: dry
    sample_rate: int = 16000  # the file's rate: below 16 kHz the speech loses its top band

    def __post_init__(self):
        if self.noise not in NOISES:
            raise ValueError(f"noise must be one of {NOISES}, got {self.noise!r}")
        if self.rt60 is not None and not 0.05 <= self.rt60 <= 3.0:
            raise ValueError(f"rt60 must be in [0.05, 3] s (a room, not a cathedral), got {self.rt60}")
        if not 4000 <= self.sample_rate <= 192_000:
            raise ValueError(f"sample_rate must be in 4000..192000 Hz, got {self.sample_rate}")


# One change at a time, for the evaluation table; the first is the reference.
EVAL_CONDITIONS = {
    "as rendered": Acoustics(),
    "-20 dB": Acoustics(gain_db=-20.0),
    "+10 dB": Acoustics(gain_db=10.0),
    "noise 20 dB SNR": Acoustics(snr_db=20.0, noise="pink"),
    "8 kHz": Acoustics(sample_rate=8000),
    "44.1 kHz": Acoustics(sample_rate=44100),
}


def draw(rng: random.Random) -> Acoustics:
    """A training clip's chain. The gain spans 32 dB (more than the +-15 dB any condition tested
    needs); half the clips are noisy and 40 % reverberant, so clean and dry stay common too."""
    return Acoustics(
        gain_db=round(rng.uniform(-20.0, 12.0), 2),
        snr_db=round(rng.uniform(8.0, 35.0), 1) if rng.random() < 0.5 else None,
        noise=rng.choice(NOISES),
        rt60=round(rng.uniform(0.15, 0.8), 2) if rng.random() < 0.4 else None,
        sample_rate=rng.choices(RATES, weights=(0.15, 0.1, 0.45, 0.15, 0.15))[0],
    )


# --- the chain --------------------------------------------------------------------------------------


def apply(audio: np.ndarray, sample_rate: int, chain: Acoustics, seed: int = 0) -> tuple[int, np.ndarray]:
    """`audio` (float, mono, at `sample_rate`) as recorded through `chain`: (rate, float32 samples).

    Samples may exceed [-1, 1] after a gain; writing PCM-16 (`write_clip`) clips them, as a
    recorder does.
    """
    rng = np.random.default_rng(seed)
    x = np.asarray(audio, dtype=np.float64)
    if chain.rt60 is not None:
        x = reverberate(x, sample_rate, chain.rt60, rng)
    if chain.snr_db is not None:
        x = x + noise_like(x, chain.snr_db, chain.noise, rng)
    x = x * 10 ** (chain.gain_db / 20)
    if chain.sample_rate != sample_rate:
        import librosa

        x = librosa.resample(x, orig_sr=sample_rate, target_sr=chain.sample_rate)
    return chain.sample_rate, x.astype(np.float32)


def room_response(sample_rate: int, rt60: float, rng: np.random.Generator) -> np.ndarray:
    """A room impulse response: the direct sound, then a diffuse tail of noise decaying by 60 dB in
    `rt60` seconds (the statistical model of late reverberation), its energy drawn relative to the
    direct sound so near and far talkers both occur."""
    n = max(int(rt60 * sample_rate), 1)
    t = np.arange(n) / sample_rate
    tail = rng.standard_normal(n) * 10 ** (-3 * t / rt60)
    tail[: int(0.002 * sample_rate)] = 0.0  # first reflections arrive after the direct sound
    direct_to_reverb_db = rng.uniform(-3.0, 12.0)
    tail *= np.sqrt(1.0 / (np.sum(tail**2) + 1e-12)) * 10 ** (-direct_to_reverb_db / 20)
    tail[0] = 1.0
    return tail


def reverberate(x: np.ndarray, sample_rate: int, rt60: float, rng: np.random.Generator) -> np.ndarray:
    from scipy.signal import fftconvolve

    return fftconvolve(x, room_response(sample_rate, rt60, rng))[: len(x)]


def noise_like(x: np.ndarray, snr_db: float, kind: str, rng: np.random.Generator) -> np.ndarray:
    """Noise of `kind`'s spectrum at `snr_db` below the power of `x`."""
    n = len(x)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.maximum(np.fft.rfftfreq(n), 1.0 / n)
    spectrum *= {"white": 1.0, "pink": f**-0.5, "brown": f**-1.0}[kind]
    noise = np.fft.irfft(spectrum, n)
    signal_power = np.mean(x**2) + 1e-12
    return noise * np.sqrt(signal_power / (np.mean(noise**2) + 1e-20) / 10 ** (snr_db / 10))


# --- a corpus through it --------------------------------------------------------------------------------


def write_clip(path: Path, sample_rate: int, audio: np.ndarray) -> None:
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.stem + ".partial.wav")
    sf.write(partial, to_pcm16(audio), sample_rate, subtype="PCM_16")
    partial.replace(path)  # a stopped run never leaves a half-written clip under the final name


def record_corpus(manifest: Path, out: Path, seed: int = 0, chain: Acoustics | None = None, workers: int = 2) -> Path:
    """Every clip of `manifest` through its own drawn chain (or `chain` for all), into
    `out/wav/`, and `out/manifest.jsonl` with each row's `acoustics`. Clips already written are
    kept, so a stopped run resumes. Returns the new manifest."""
    import soundfile as sf

    rows = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines() if line.strip()]
    out.mkdir(parents=True, exist_ok=True)

    def one(row: dict) -> dict:
        src = Path(row["audio"]) if Path(row["audio"]).is_absolute() else manifest.parent / row["audio"]
        name = Path(row["audio"]).name
        this = chain if chain is not None else draw(random.Random(f"{seed}|{name}|acoustics"))
        target = out / "wav" / name
        if not target.exists():
            audio, rate = sf.read(src, dtype="float32", always_2d=False)
            sample_rate, recorded = apply(audio, rate, this, seed=_clip_seed(seed, name))
            write_clip(target, sample_rate, recorded)
        return {**row, "audio": f"wav/{name}", "acoustics": asdict(this)}

    with ThreadPoolExecutor(max(1, workers)) as pool:
        new_rows = list(pool.map(one, rows))
    path = out / "manifest.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in new_rows), encoding="utf-8")
    return path


def _clip_seed(seed: int, name: str) -> int:
    import zlib

    return zlib.crc32(f"{seed}|{name}".encode())


def level_dbfs(audio: np.ndarray) -> float:
    """RMS level in dB relative to full scale (a sine at full scale is -3 dBFS)."""
    return float(10 * np.log10(np.mean(np.square(audio, dtype=np.float64)) + 1e-20))


def summary(rows: Sequence[dict]) -> dict:
    """How a recorded corpus spreads over the chain's settings (for the build's report)."""
    chains = [r["acoustics"] for r in rows if "acoustics" in r]
    gains = sorted(c["gain_db"] for c in chains)
    return {
        "clips": len(chains),
        "gain_db_range": [gains[0], gains[-1]] if gains else None,
        "noisy": sum(c["snr_db"] is not None for c in chains),
        "reverberant": sum(c["rt60"] is not None for c in chains),
        "sample_rates": {str(r): sum(c["sample_rate"] == r for c in chains) for r in RATES},
    }
