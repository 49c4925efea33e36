"""Balanced blind assignment: which two systems a rater compares on which clip, and which is A.

A *condition* is a pair of systems and an order (which one is shown as A). Each new rater takes
the conditions used least so far across all raters (ties broken at random), so every pair and
every order is shown equally often, to within one, however many raters come. The store runs this
inside the transaction that records the plan, so concurrent raters see each other's counts.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from blsp_emo.study.config import StudyConfig

OWN_RECORDING = "own-recording"  # the stimulus id of a trial answered on the rater's own clip


@dataclass(frozen=True)
class Trial:
    index: int  # 0-based position in the rater's plan
    stimulus: str
    pair: tuple[str, str]  # the systems in the study file's order
    swapped: bool  # True: pair[1] is shown as A

    @property
    def system_a(self) -> str:
        return self.pair[1] if self.swapped else self.pair[0]

    @property
    def system_b(self) -> str:
        return self.pair[0] if self.swapped else self.pair[1]

    def system(self, side: str) -> str:
        return self.system_a if side == "A" else self.system_b


Condition = tuple[tuple[str, str], bool]


def conditions(config: StudyConfig) -> list[Condition]:
    return [(pair, swapped) for pair in config.pairs for swapped in (False, True)]


def plan_trials(
    config: StudyConfig,
    condition_counts: Mapping[Condition, int],
    stimulus_counts: Mapping[tuple[tuple[str, str], str], int],
    rng: random.Random,
) -> list[Trial]:
    """`config.trials_per_rater` trials for one rater, least-used conditions and clips first.

    Within one rater a condition repeats only after all others were used, among equally used ones
    a new pair comes first, and a clip repeats only after every clip was heard.
    """
    counts, stim_counts = Counter(condition_counts), Counter(stimulus_counts)
    mine, pairs, heard = Counter(), Counter(), Counter()
    trials = []
    for index in range(config.trials_per_rater):
        # Global counts come before this rater's pair variety, so balance across raters is never traded away.
        condition = min(conditions(config), key=lambda c: (mine[c], counts[c], pairs[c[0]], rng.random()))
        pair = condition[0]
        pairs[pair] += 1
        stimulus = min((s.id for s in config.stimuli), key=lambda s: (heard[s], stim_counts[pair, s], rng.random()))
        counts[condition] += 1
        mine[condition] += 1
        stim_counts[pair, stimulus] += 1
        heard[stimulus] += 1
        trials.append(Trial(index, stimulus, pair, condition[1]))
    return trials


def balance(condition_counts: Mapping[Condition, int], config: StudyConfig) -> dict:
    """Counts per pair and order, with the spread (max − min) that balanced assignment keeps ≤ 1."""
    per = {
        f"{a} vs {b} ({'swapped' if s else 'as listed'})": int(condition_counts.get(((a, b), s), 0))
        for (a, b), s in conditions(config)
    }
    values = list(per.values())
    return {"conditions": per, "min": min(values), "max": max(values), "spread": max(values) - min(values)}
