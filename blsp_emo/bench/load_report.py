"""What `loadtest` reports: what each phase saw (`Phase`) and its percentiles, the rounds side by
side, a bootstrap interval for the ratio, and the lines it prints."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Phase:
    """What one phase (N visitors for S seconds) saw."""

    users: int
    spans: list[tuple[float, float]] = field(default_factory=list)  # (start, end) of each turn: Send to final output
    stolen: list[float] = field(default_factory=list)  # per turn (as spans): CPU s the hypervisor took meanwhile
    spoken: list[float] = field(default_factory=list)  # seconds of the turns that sent a clip
    typed: list[float] = field(default_factory=list)  # ... of the others
    errors: list[str] = field(default_factory=list)
    cross_talk: list[str] = field(default_factory=list)
    rounds: list[int] = field(default_factory=list)  # per turn (as spans): the round of the slice it was sent in
    round: int = 0  # the round of the slice running now
    slice_stolen: list[float] = field(default_factory=list)  # per slice: CPU s the hypervisor took meanwhile
    replays: int = 0  # conversations replayed by the same visitor
    replay_mismatches: int = 0  # ... whose replies differed from the first time (greedy: they should not)
    cpu_s: dict[str, float] = field(default_factory=dict)  # CPU seconds spent during this phase's slices, by process
    # (and "stolen": what the hypervisor took from the whole machine meanwhile)

    def add_cpu(self, before: dict[str, float], after: dict[str, float]) -> None:
        """Count one slice's CPU (`cpu()` before and after it)."""
        for name in after.keys() & before.keys():
            self.cpu_s[name] = self.cpu_s.get(name, 0.0) + after[name] - before[name]
        self.slice_stolen.append(after.get("stolen", 0.0) - before.get("stolen", 0.0))

    @property
    def latencies(self) -> list[float]:
        """Seconds per turn, in the order the turns ended."""
        return [end - start for start, end in self.spans]

    def by_round(self, rounds: int) -> list[list[float]]:
        """Seconds per turn, grouped by the round they were sent in (`rounds` groups)."""
        groups: list[list[float]] = [[] for _ in range(rounds)]
        for seconds, sent_in in zip(self.latencies, self.rounds):
            groups[sent_in].append(seconds)
        return groups

    def summary(self) -> dict:
        durations, overlapped = self.latencies, _overlapping(self.spans)
        lat = sorted(durations)
        alone = [d for i, d in enumerate(durations) if i not in overlapped]
        robbed = {i for i, s in enumerate(self.stolen) if s > 0}
        spared = [d for i, d in enumerate(durations) if i not in robbed]
        return {
            "users": self.users,
            "turns": len(lat),
            "errors": len(self.errors),
            "cross_talk": len(self.cross_talk),
            "p50_s": _percentile(lat, 50),
            "p95_s": _percentile(lat, 95),
            "max_s": lat[-1] if lat else None,
            "spoken_turns": len(self.spoken),
            "spoken_p50_s": _percentile(self.spoken, 50),
            "spoken_p95_s": _percentile(self.spoken, 95),
            "typed_p50_s": _percentile(self.typed, 50),
            "typed_p95_s": _percentile(self.typed, 95),
            "overlapped_turns": len(overlapped),
            "alone_p50_s": _percentile(alone, 50),
            "overlapped_p50_s": _percentile([durations[i] for i in overlapped], 50),
            "stolen_turns": len(robbed),
            "stolen_p50_s": _percentile([durations[i] for i in robbed], 50),
            "unstolen_p50_s": _percentile(spared, 50),
            "unstolen_p95_s": _percentile(spared, 95),
            "cpu_ms_per_turn": {k: 1e3 * v / len(lat) for k, v in sorted(self.cpu_s.items())} if lat else {},
            "replays": self.replays,
            "replay_mismatches": self.replay_mismatches,
            "error_examples": self.errors[:3],
            "cross_talk_examples": self.cross_talk[:3],
        }


def _overlapping(spans: list[tuple[float, float]]) -> set[int]:
    """The indices of the turns that ran while another turn of the phase ran."""
    order = sorted(range(len(spans)), key=lambda i: spans[i][0])
    found, latest_end, latest = set(), float("-inf"), None
    for i in order:
        start, end = spans[i]
        if start < latest_end:  # began before the longest-running earlier turn ended
            found.update((i, latest))
        if end > latest_end:
            latest_end, latest = end, i
    return found


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return float(np.percentile(values, q, method="nearest"))


def round_summaries(alone: Phase, together: Phase, rounds: int) -> list[dict]:
    """Each round's pair of slices: their turns, the ratio's two terms, and the CPU the hypervisor
    took during each slice, to show which rounds the machine slowed and by how much."""
    out = []
    for r, (single, crowd) in enumerate(zip(alone.by_round(rounds), together.by_round(rounds))):
        p50, p95 = _percentile(single, 50), _percentile(crowd, 95)
        out.append(
            {
                "single_turns": len(single),
                "single_p50_s": p50,
                "concurrent_turns": len(crowd),
                "concurrent_p95_s": p95,
                "p95_over_single_p50": _ratio(p95, p50),
                "single_stolen_s": _at(alone.slice_stolen, r),
                "concurrent_stolen_s": _at(together.slice_stolen, r),
            }
        )
    return out


def _at(values: list[float], index: int) -> float | None:
    return values[index] if index < len(values) else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def ratio_interval(
    single: list[list[float]], crowd: list[list[float]], level: float = 0.9, draws: int = 4000, seed: int = 0
) -> list[float] | None:
    """A bootstrap interval for p95(crowd) / p50(single), from each phase's turns grouped by round:
    how far the ratio could move on the same machine in another run of as many rounds.

    Two stages: the rounds with replacement, the same ones for both phases (their slices ran side by
    side, so they share the machine's speed at the time), then the turns within each drawn round.
    The machine's speed drifts from one round to the next, so the turns of a round are not
    independent draws: resampling turns alone would understate the doubt. The single phase's few
    turns per slice set most of it. With one round it is a plain bootstrap of the turns.
    """
    pairs = [(np.asarray(s, float), np.asarray(c, float)) for s, c in zip(single, crowd) if len(s) or len(c)]
    if not any(len(s) for s, _ in pairs) or not any(len(c) for _, c in pairs):
        return None
    rng, ratios = np.random.default_rng(seed), []
    for _ in range(draws):
        drawn = [pairs[i] for i in rng.integers(len(pairs), size=len(pairs))]
        alone = np.concatenate([rng.choice(s, len(s)) for s, _ in drawn])
        together = np.concatenate([rng.choice(c, len(c)) for _, c in drawn])
        if len(alone) and len(together):  # else every drawn round lacked one phase's turns: no ratio
            ratios.append(np.percentile(together, 95, method="nearest") / np.percentile(alone, 50, method="nearest"))
    low, high = np.percentile(ratios, [50 * (1 - level), 50 * (1 + level)])
    return [float(low), float(high)]


def format_report(report: dict) -> Iterator[str]:
    if "startup_s" in report:
        yield (
            f"app ready (HTTP 200 on /) {report['startup_s']:.2f} s after process start; peak RSS of the server "
            f"and its workers {report['server_peak_rss_mb']:.0f} MB"
        )
    o = report["options"]
    yield (
        f"{report['url']}: {o['seconds']:g} s per phase in {o['rounds']} alternating round(s), {o['turns']} turns "
        f"per conversation, think {o['think']:g} s, visitors through {o['client']}"
    )
    for name in ("single", "concurrent"):
        p = report[name]
        yield (
            f"  {p['users']} visitor(s): {p['turns']} turns, p50 {p['p50_s'] or 0:.3f} s, p95 {p['p95_s'] or 0:.3f} s, "
            f"errors {p['errors']}, cross-talk {p['cross_talk']}, replays {p['replays']} "
            f"({p['replay_mismatches']} differed); spoken turns {p['spoken_turns']}: p50 "
            f"{p['spoken_p50_s'] or 0:.3f} s, p95 {p['spoken_p95_s'] or 0:.3f} s; typed: p50 "
            f"{p['typed_p50_s'] or 0:.3f} s, p95 {p['typed_p95_s'] or 0:.3f} s"
        )
        if p["overlapped_turns"]:
            yield (
                f"    {p['overlapped_turns']} turns ran while another did: p50 {p['overlapped_p50_s']:.3f} s, "
                f"against {p['alone_p50_s'] or 0:.3f} s for the others"
            )
        if p["stolen_turns"]:
            yield (
                f"    {p['stolen_turns']} turns ran while the hypervisor took CPU: p50 {p['stolen_p50_s']:.3f} s; "
                f"the others p50 {p['unstolen_p50_s'] or 0:.3f} s, p95 {p['unstolen_p95_s'] or 0:.3f} s"
            )
        if p["cpu_ms_per_turn"]:
            cpu = dict(p["cpu_ms_per_turn"])
            stolen = cpu.pop("stolen", 0.0)
            yield (
                "    CPU per turn: "
                + ", ".join(f"{k} {v:.1f} ms" for k, v in cpu.items())
                + (f"; taken by the hypervisor {stolen:.1f} ms" if stolen else "")
            )
        for example in p["error_examples"] + p["cross_talk_examples"]:
            yield f"    {example}"
    if report["p95_over_single_p50"] is not None:
        yield (
            f"  concurrent p95 / single p50 = {report['p95_over_single_p50']:.2f} (all turns), "
            f"{report['spoken_p95_over_single_p50'] or float('nan'):.2f} (spoken turns against spoken), "
            f"{report['typed_p95_over_single_p50'] or float('nan'):.2f} (typed against typed)"
        )
        low, high = report["p95_over_single_p50_90ci"]
        yield f"  its 90 % bootstrap interval (rounds, then their turns, redrawn): {low:.2f}-{high:.2f}"
        if len(report["rounds"]) > 1:
            rounds = ", ".join(
                f"{r['single_p50_s'] or 0:.3f}/{r['concurrent_p95_s'] or 0:.3f} "
                f"({(r['single_stolen_s'] or 0) + (r['concurrent_stolen_s'] or 0):.1f})"
                for r in report["rounds"]
            )
            yield (
                f"  by round, 1 visitor p50 / {report['concurrent']['users']} visitors p95 s "
                f"(CPU s the hypervisor took in the two slices): {rounds}"
            )
        stolen = report["single"]["stolen_turns"] + report["concurrent"]["stolen_turns"]
        if stolen and report["unstolen_p95_over_single_p50"] is not None:
            yield (
                f"  the same over the turns during which the hypervisor took no CPU: "
                f"{report['unstolen_p95_over_single_p50']:.2f}"
            )
