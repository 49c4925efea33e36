import os

# Offline before anything imports huggingface_hub or gradio.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402

import tiny  # noqa: E402
from blsp_emo.model.checkpoint import save_model  # noqa: E402

# Tiny models gain nothing from a second thread, and two busy threads per process on 2 cores
# (the app test serves requests while its client waits) slow everything down many times over.
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tokenizer():
    return tiny.tokenizer()


@pytest.fixture(scope="session")
def model_and_tokenizer(tokenizer):
    return tiny.model(tok=tokenizer)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, model_and_tokenizer):
    """A tiny BLSP-Emo model saved as a folder, as `--model DIR` takes it."""
    path = tmp_path_factory.mktemp("model")
    save_model(*model_and_tokenizer, path)
    return path


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory, model_and_tokenizer):
    """A bundle folder: blsp-emo/, blsp/, asr/, ser/, as the demo models are laid out."""
    root = tmp_path_factory.mktemp("bundle")
    model, tok = model_and_tokenizer
    save_model(model, tok, root / "blsp-emo")
    stage1, _ = tiny.model(seed=1, lora_rank=0, tok=tok)
    save_model(stage1, tok, root / "blsp")
    tiny.asr().save_pretrained(root / "asr")
    tiny.ser().save_pretrained(root / "ser")
    return root


@pytest.fixture(scope="session")
def clip_path(tmp_path_factory):
    """5 s of tone at 16 kHz mono."""
    path = tmp_path_factory.mktemp("clips") / "tone5s.wav"
    sf.write(path, tiny.tone(5.0), 16000)
    return path


@pytest.fixture()
def rng():
    return np.random.default_rng(0)
