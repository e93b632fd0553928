"""benchmarks/timing.py's ratios, under a clock that moves only when a case runs: exact arithmetic, no real timing."""
from pathlib import Path

import pytest

from test_training import Clock

ROOT = Path(__file__).resolve().parents[1]

# seconds a call takes in each of three repetitions: the Hardswish step and its LayerAct step move differently
COSTS = {"SiLU": [1.0, 1.0, 1.0], "Hardswish": [0.9, 0.8, 1.0], "LA-HardSiLU": [0.95, 0.85, 0.9]}
ROUNDS = 4


def cases_on(clock):
    calls = {name: 0 for name in COSTS}

    def case(name):
        def run():
            # one warm-up call in the first repetition, then ROUNDS calls a repetition
            repeat = 0 if calls[name] <= ROUNDS else (calls[name] - 1) // ROUNDS
            calls[name] += 1
            clock.now += COSTS[name][repeat]
        return run
    return {name: case(name) for name in COSTS}


@pytest.fixture
def timing(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import timing
    return timing


def test_a_case_measured_against_its_own_baseline_pairs_the_same_repetitions(timing):
    clock = Clock()
    result = timing.repeated_ratios(cases_on(clock), "SiLU", ROUNDS, 3, clock=clock,
                                    against={"LA-HardSiLU": "Hardswish"})
    ratio, lo, hi, seconds = result["LA-HardSiLU"]
    # per repetition 0.95/0.9, 0.85/0.8, 0.9/1.0; dividing the two median ratios to SiLU would give 0.9/0.9 = 1
    assert ratio == pytest.approx(0.95 / 0.9) and lo == pytest.approx(0.9) and hi == pytest.approx(0.85 / 0.8)
    assert seconds == pytest.approx(0.9)
    assert result["Hardswish"][:3] == pytest.approx((0.9, 0.8, 1.0))  # the others stay against SiLU
    assert result["SiLU"][:3] == (1.0, 1.0, 1.0)


def test_an_unknown_baseline_is_refused_before_timing(timing):
    clock = Clock()
    with pytest.raises(ValueError, match=r"\['Hard-swish'\] are not among the cases"):
        timing.repeated_ratios(cases_on(clock), "SiLU", ROUNDS, 3, clock=clock, against={"LA-HardSiLU": "Hard-swish"})
    assert clock.now == 1000.0  # nothing ran
