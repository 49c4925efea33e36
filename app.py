"""The BLSP-Emo demo: talk, see the emotion you were heard in, hear an empathetic reply, compare.

    python app.py [--model DIR_OR_HUB_ID] [--systems blsp-emo,cascade] [--tts piper|espeak|pyttsx3|none]
                  [--workers N] [--host 0.0.0.0] [--port 7860]

This file starts the app. It reads the options, starts the model worker processes
(blsp_emo/serving/workers.py), and imports Gradio and the page (`webui/`) while they
load the models; then it builds the page over the systems that loaded and serves it. With
`--workers 0` the models load in this process instead.

`app.build_demo(systems, synthesizer) -> gr.Blocks` only builds the page, and `app.launch(demo)`
serves it; both come from `webui.demo_page` when first used, so that importing this file stays quick.
"""

from __future__ import annotations

import argparse
import errno
import importlib.util
import os
import socket
import sys
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

# Offline by default (no analytics, telemetry or hub calls); export HF_HUB_OFFLINE=0 to use the hub.
for _key, _value in (("HF_HUB_OFFLINE", "1"), ("HF_HUB_DISABLE_TELEMETRY", "1"), ("GRADIO_ANALYTICS_ENABLED", "False")):
    os.environ.setdefault(_key, _value)

from blsp_emo.model.weights import CorruptWeightsError  # noqa: E402
from blsp_emo.options import add_model_options, default_device  # noqa: E402
from blsp_emo.serving.evidence import EvidenceReader  # noqa: E402
from blsp_emo.serving.pool import WorkerPool  # noqa: E402
from blsp_emo.serving.protocol import WorkerError, WorkerSpec  # noqa: E402
from blsp_emo.serving.workers import apply_threads, freeze_loaded  # noqa: E402
from blsp_emo.study import DB_ENV, DEFAULT_DB, DEFAULT_STUDY, StudyConfig, StudyConfigError  # noqa: E402
from blsp_emo.systems import available_systems, load_systems  # noqa: E402
from blsp_emo.tts import (  # noqa: E402
    DEFAULT_SYNTHESIZER,
    DEFAULT_SYNTHESIZER_NOTE,
    NullSynthesizer,
    SynthesizerUnavailableError,
    available_synthesizers,
    load_synthesizer,
)

# The page's names, offered here too, each from the module of webui that defines it.
_PAGE = {"build_demo": "demo_page", "launch": "demo_page", "Callbacks": "callbacks", "Exchange": "callbacks"}


def __getattr__(name: str):
    if name in _PAGE:
        return getattr(importlib.import_module(f"webui.{_PAGE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--host", help="address to serve on (default: 127.0.0.1, or $GRADIO_SERVER_NAME)")
    p.add_argument("--port", type=int, help="port (default: 7860 or the next free one, or $GRADIO_SERVER_PORT)")
    add_model_options(p, model_default=os.environ.get("BLSP_EMO_MODEL"))  # $BLSP_EMO_MODEL: a Space variable
    p.add_argument(
        "--systems",
        default=",".join(available_systems()),
        help="comma-separated systems to offer (default: every one whose models load)",
    )
    p.add_argument(
        "--tts",
        choices=available_synthesizers(),
        default=DEFAULT_SYNTHESIZER,
        help=f"voice of the spoken replies (default: {DEFAULT_SYNTHESIZER}; piper, the neural voice, where installed)",
    )
    p.add_argument("--concurrency", type=int, default=2, help="model calls at once (default: 2)")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="model worker processes, each with its own copy of the models: the systems run there, beside "
        "the page's own work (default: one per core up to --concurrency for the bundled demo models, "
        "1 for any other model or on a GPU; 0 runs them in this process, the default on a ZeroGPU "
        "Space, whose GPU only this process gets)",
    )
    p.add_argument("--max-queue", type=int, default=16, help="waiting requests before 'busy' (default: 16)")
    p.add_argument(
        "--max-batch",
        type=int,
        default=16,
        help="replies decoded together, one forward per token for all (default: 16; at most "
        "--concurrency replies decode at once; 0 decodes each in its own call)",
    )
    p.add_argument(
        "--stream-interval",
        type=float,
        default=0.05,
        help="seconds between updates of a streaming reply; 0 updates every token (default: 0.05)",
    )
    p.add_argument(
        "--study",
        default=None,
        help="study file for the Rate tab (default: the example study, when its systems are loaded); "
        "'none' for no Rate tab",
    )
    p.add_argument(
        "--study-db",
        default=None,
        help=f"ratings database (default: ${DB_ENV}, else {DEFAULT_DB}); put it on a mounted volume",
    )
    p.add_argument(
        "--study-invite",
        default=None,
        help="invitation code raters must give to begin (default: $BLSP_EMO_STUDY_INVITE; none: anyone may rate)",
    )
    return p.parse_args(argv)


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_workers(args: argparse.Namespace) -> int:
    """How many model workers `args` gets without --workers.

    0 where the `spaces` package is: a ZeroGPU Space lends its GPU call by call to this process.
    1 on a GPU or for a model given by --model: each worker holds a copy (the released one is 17 GB).
    Otherwise (the 21 MB bundled models on CPU) one per core, up to --concurrency: two turns that
    overlap then run side by side (docs/serving.md).
    """
    if importlib.util.find_spec("spaces"):
        return 0
    gpu = (args.device or "").startswith("cuda") or any(Path("/proc/driver/nvidia/gpus").glob("*"))
    if gpu or args.model is not None:
        return 1
    return max(1, min(_cores(), args.concurrency))


def study_config(args: argparse.Namespace) -> StudyConfig | None:
    """The study file named by --study, checked before any model loads; exits naming what is wrong."""
    if (args.study or "").lower() == "none":
        return None
    try:
        return StudyConfig.load(args.study or DEFAULT_STUDY)
    except StudyConfigError as e:
        sys.exit(f"error: study: {e}")


def check_port(args: argparse.Namespace) -> None:
    """Exit with one line if the app could not serve where asked. Gradio finds out only when it
    serves, after the models have loaded (46 s for the released model), and with a traceback.

    Gradio serves on --port (or $GRADIO_SERVER_PORT) if given, else on the first free port of the
    100 from 7860; it binds as here, with SO_REUSEADDR, so a port merely in TIME_WAIT counts as free.
    """
    host = args.host or os.environ.get("GRADIO_SERVER_NAME") or "127.0.0.1"
    if args.port is not None:
        ports, named = [args.port], "--port"
    else:
        ports, named = _gradio_ports(), "$GRADIO_SERVER_PORT"
    if not 1 <= ports[0] <= 65535:
        sys.exit(f"error: {named} {ports[0]} is not a port number; choose one in 1–65535")
    ports = [p for p in ports if p <= 65535]
    if not any(_port_free(host, p) for p in ports):
        which = (
            f"port {ports[0]} on {host} is" if len(ports) == 1 else f"ports {ports[0]}–{ports[-1]} on {host} are all"
        )
        sys.exit(
            f"error: {which} in use by another program; choose a free port with --port N (or "
            "GRADIO_SERVER_PORT=N), or stop what listens there"
        )


def _gradio_ports() -> list[int]:
    """The ports Gradio tries when none is given: $GRADIO_NUM_PORTS (100) from $GRADIO_SERVER_PORT (7860)."""
    raw = os.environ.get("GRADIO_SERVER_PORT", "7860"), os.environ.get("GRADIO_NUM_PORTS", "100")
    try:
        start, count = (int(v) for v in raw)
    except ValueError:
        sys.exit(f"error: GRADIO_SERVER_PORT={raw[0]!r} / GRADIO_NUM_PORTS={raw[1]!r}: whole numbers, please")
    return list(range(start, start + max(count, 1)))


def _port_free(host: str, port: int) -> bool:
    """Whether `port` on `host` can be bound now; exits naming the address if nothing could be."""
    try:
        family, kind, _, _, address = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(address)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            return False
        sys.exit(f"error: cannot serve on {host}:{port} ({e}); check --host (127.0.0.1, 0.0.0.0) and --port")
    return True


def _threads_per_call(concurrency: int) -> int:
    """Torch threads for each model call: the cores split between the calls that run at once (0: leave
    torch's default, as OMP_NUM_THREADS asks). Torch's default gives every call all cores, and two
    calls then fight over them (10x slower on 2 cores)."""
    if "OMP_NUM_THREADS" in os.environ:
        return 0
    return max(1, _cores() // max(concurrency, 1))


def _systems(names: Sequence[str], parts: dict, threads: int, starting: Future | None):
    """The systems, the notes on those that did not load, their worker pool (None: in this process), and
    what reads the evidence behind a turn's emotion where they run (blsp_emo/serving/evidence.py)."""
    if starting is None:
        apply_threads(threads)
        device = parts["device"] or default_device()
        try:
            systems, notes = load_systems(names, **{**parts, "device": device})
        except CorruptWeightsError as e:
            sys.exit(f"error: {e}")
        return systems, notes, None, EvidenceReader(parts["model"], parts["asr"], parts["ser"], device).read
    try:
        pool = starting.result()
    except WorkerError as e:
        sys.exit(f"error: {e}")
    return pool.systems, pool.notes, pool, pool.evidence


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    names = [n.strip() for n in args.systems.split(",") if n.strip()]
    unknown = sorted(set(names) - set(available_systems()))
    if unknown:
        sys.exit(f"error: unknown system(s) {unknown}; available: {available_systems()}")
    if args.max_batch < 0:
        sys.exit(f"error: --max-batch must be >= 0, got {args.max_batch}")
    if args.workers is None:
        args.workers = default_workers(args)
    if args.workers < 0:
        sys.exit(f"error: --workers must be >= 0, got {args.workers}")
    check_port(args)  # an occupied port stops here, before any model loads
    study = study_config(args)  # so does a bad study file
    model, label = args.model, args.model or "assets/models (bundled demo models)"
    if args.revision:  # pin a hub revision: load that snapshot
        from blsp_emo.model.checkpoint import ModelNotFoundError, resolve

        try:
            model, label = str(resolve(args.model or "", args.revision)), f"{args.model}@{args.revision}"
        except ModelNotFoundError as e:
            sys.exit(f"error: --revision {args.revision}: {e}")
    parts = dict(
        model=model,
        asr=args.asr,
        ser=args.ser,
        llm=args.llm,
        device=args.device,
        dtype=args.dtype,
        max_batch=args.max_batch,
    )
    threads = _threads_per_call(args.concurrency)
    with ThreadPoolExecutor(1, thread_name_prefix="start-workers") as background:
        spec = (
            WorkerSpec(
                tuple(names), **parts, threads=threads, slots=args.concurrency, stream_interval=args.stream_interval
            )
            if args.workers
            else None
        )
        starting = background.submit(WorkerPool.start, spec, args.workers) if spec else None
        from webui import demo_page, study_tabs

        systems, notes, pool, evidence = _systems(names, parts, threads, starting)
    try:
        try:
            synthesizer = load_synthesizer(args.tts)
            if args.tts == DEFAULT_SYNTHESIZER and DEFAULT_SYNTHESIZER_NOTE:
                notes = [*notes, DEFAULT_SYNTHESIZER_NOTE]  # why the replies are not in the neural voice
        except SynthesizerUnavailableError as e:
            synthesizer, notes = NullSynthesizer(), [*notes, f"spoken replies off: {e}"]
        for note in notes:
            print(f"app: {note}", file=sys.stderr)
        runner = study_tabs.runner_from_args(args, study, systems, synthesizer)
        demo = demo_page.build_demo(
            systems,
            synthesizer,
            model_label=label,
            notes=notes,
            concurrency=args.concurrency,
            max_queue=args.max_queue,
            study=runner,
            stream_interval=args.stream_interval,
            evidence=evidence,
        )
        freeze_loaded()
        demo_page.launch(demo, args.host, args.port)
    finally:  # also when the study or the page stops the app before it serves
        if pool is not None:
            pool.close()


if __name__ == "__main__":
    main()
