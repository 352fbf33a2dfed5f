"""The timing helpers behind every benchmark ratio: round-robin order and paired differences."""

import pytest

from anode_ext.bench import timing
from anode_ext.bench.timing import compare_medians, compare_samples, median_paired_difference


def test_compare_samples_runs_variants_in_turns_after_warmup():
    calls = []
    variants = {name: (lambda name=name: calls.append(name)) for name in ("a", "b")}
    samples = compare_samples(variants, "cpu", warmup=1, repeats=3)
    assert calls == ["a", "b"] * 4
    assert {name: len(values) for name, values in samples.items()} == {"a": 3, "b": 3}
    assert all(t >= 0 for values in samples.values() for t in values)
    assert set(compare_medians(variants, "cpu", warmup=0, repeats=1)) == {"a", "b"}


def test_compare_samples_rejects_bad_counts():
    with pytest.raises(ValueError, match="expected repeats >= 1 and warmup >= 0, got 0 and 2"):
        compare_samples({"a": lambda: None}, "cpu", repeats=0)


def test_paired_difference_is_the_median_of_per_round_differences():
    # Rounds 2 and 4 are slow for both variants; the per-round differences are 1, 1, 4, 1, 2.
    samples = {"solve": [2.0, 20.0, 7.0, 51.0, 5.0], "bare": [1.0, 19.0, 3.0, 50.0, 3.0]}
    assert median_paired_difference(samples, "solve", "bare") == pytest.approx(1.0)


def test_paired_difference_needs_one_sample_per_round():
    with pytest.raises(ValueError):
        median_paired_difference({"solve": [1.0, 2.0], "bare": [1.0]}, "solve", "bare")


class FakeClock:
    """perf_counter for compare_samples: each timed call lasts the next of `durations`."""

    def __init__(self, durations):
        self.durations = iter(durations)
        self.now = 0.0
        self.started = False

    def __call__(self):
        if self.started:
            self.now += next(self.durations)
        self.started = not self.started
        return self.now


def test_a_noisy_comparison_is_rerun_then_flagged(monkeypatch):
    # One variant, no warmup, 4 rounds per run: every run is as noisy as the first.
    monkeypatch.setattr(timing.time, "perf_counter", FakeClock([1.0, 1.0, 3.0, 3.0] * 3))
    timings = timing.compare_timings({"a": lambda: None}, "cpu", warmup=0, repeats=4, max_reruns=2)
    t = timings["a"]
    assert t.reruns == 2 and t.noisy and t.median == 2.0
    assert t.summary()["spread"] == pytest.approx(1.0) and t.summary()["min"] == 1.0
    cell = timing.time_cell(t.summary())
    assert cell == "2000.0 (IQR 100 %) †"
    assert "† spread above 10% after 2 reruns" in timing.noisy_footnote([t.summary()])


def test_a_steady_comparison_runs_once_and_the_least_noisy_run_is_kept(monkeypatch):
    monkeypatch.setattr(timing.time, "perf_counter", FakeClock([1.0, 1.01, 0.99, 1.0]))
    t = timing.compare_timings({"a": lambda: None}, "cpu", warmup=0, repeats=4)["a"]
    assert t.reruns == 0 and not t.noisy
    assert timing.noisy_footnote([t.summary()]) == ""
    # First run noisy, second steady: the second is kept, unflagged.
    monkeypatch.setattr(timing.time, "perf_counter", FakeClock([1.0, 1.0, 3.0, 3.0, 1.0, 1.0, 1.0, 1.0]))
    t = timing.compare_timings({"a": lambda: None}, "cpu", warmup=0, repeats=4)["a"]
    assert t.reruns == 1 and not t.noisy and t.median == 1.0


def test_timing_summaries_are_found_anywhere_in_results():
    steady, noisy = timing.Timing((1.0, 1.0, 1.0)).summary(), timing.Timing((1.0, 2.0, 4.0)).summary()
    results = {"ops": [{"timings": {"a": steady, "b": noisy}}], "models": [{"timing": steady}], "seconds": 3.0}
    found = list(timing.timing_summaries(results))
    assert len(found) == 3 and sum(s["noisy"] for s in found) == 1
