"""The timing helpers behind every benchmark ratio: round-robin order and paired differences."""

import pytest

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
