import numpy as np
import pytest
import torch

from descore_plugin.evaluation.metrics import (
    MetricInputError,
    accuracy_by_slice,
    accuracy_with_ties,
    accuracy_with_ties_and_threshold,
    accuracy_without_ties,
    labels_to_int,
)


def brute_force_with_ties(margins, codes):
    """Direct loop: every candidate eps (-1 and each |m|), every pair classified from scratch."""
    margins = np.asarray(margins, dtype=np.float64)
    best_accuracy, best_eps = -1.0, None
    for eps in sorted({-1.0, *np.abs(margins).tolist()}):
        correct = 0
        for m, h in zip(margins, codes):
            model_ties = abs(m) <= eps
            if h == 0:
                correct += model_ties
            else:
                correct += (not model_ties) and np.sign(m) == h
        if correct / len(margins) > best_accuracy:
            best_accuracy, best_eps = correct / len(margins), eps
    return best_accuracy, best_eps


def videoalign_loop(margins, codes):
    """The VideoAlign update loop, written out: tie one more pair (stable |m| order) and score each state."""
    order = sorted(range(len(margins)), key=lambda i: abs(margins[i]))
    tied = set()
    best = float("-inf")
    for i in order:
        tied.add(i)
        correct = sum((h == 0) if j in tied else (h != 0 and np.sign(margins[j]) == h) for j, h in enumerate(codes))
        best = max(best, correct / len(margins))
    return best


def random_case(rng):
    n = int(rng.integers(1, 12))
    # Quantised margins so that equal |m| values, opposite signs of equal size and exact zeros are common.
    margins = rng.integers(-3, 4, size=n) * 0.5
    codes = rng.integers(-1, 2, size=n)
    return margins, codes


def test_with_ties_matches_brute_force_on_random_quantised_cases():
    rng = np.random.default_rng(0)
    for _ in range(3000):
        margins, codes = random_case(rng)
        accuracy, eps = accuracy_with_ties_and_threshold(margins, codes)
        expected_accuracy, expected_eps = brute_force_with_ties(margins, codes)
        assert accuracy == pytest.approx(expected_accuracy, abs=1e-12)
        assert eps == expected_eps


def test_videoalign_compat_matches_the_videoalign_loop():
    rng = np.random.default_rng(1)
    higher = 0
    for _ in range(2000):
        margins, codes = random_case(rng)
        compat = accuracy_with_ties(margins, codes, videoalign_compat=True)
        assert compat == pytest.approx(videoalign_loop(margins, codes), abs=1e-12)
        higher += compat > accuracy_with_ties(margins, codes) + 1e-12
    assert higher > 0  # the partial-group states do show up on quantised margins


def test_with_ties_equals_brute_force_on_distinct_continuous_margins():
    rng = np.random.default_rng(2)
    margins = rng.normal(size=200)
    codes = rng.integers(-1, 2, size=200)
    assert accuracy_with_ties(margins, codes) == pytest.approx(brute_force_with_ties(margins, codes)[0])


def test_compat_reports_an_unreachable_value_on_equal_margins():
    # Both |m| = 1: a threshold ties both (1/2 right) or neither (1/2 right). VideoAlign also scores
    # "first tied, second not", which no threshold gives, and reports 1.0.
    margins, labels = [1.0, 1.0], ["tie", "A"]
    assert accuracy_with_ties(margins, labels) == 0.5
    assert accuracy_with_ties(margins, labels, videoalign_compat=True) == 1.0


def test_no_model_ties_can_be_best():
    margins, labels = [1.0, -2.0, 3.0], ["A", "B", "tie"]
    accuracy, eps = accuracy_with_ties_and_threshold(margins, labels)
    assert accuracy == pytest.approx(2 / 3)
    assert eps == -1.0
    # VideoAlign never tries eps = -1: its best state ties at least the first pair.
    assert accuracy_with_ties(margins, labels, videoalign_compat=True) == pytest.approx(1 / 3)


def test_threshold_is_the_smallest_best_and_ties_count():
    margins = [0.1, -0.2, 2.0, -3.0]
    labels = ["tie", "tie", "A", "B"]
    accuracy, eps = accuracy_with_ties_and_threshold(margins, labels)
    assert accuracy == 1.0
    assert eps == pytest.approx(0.2)


def test_without_ties_exact_values_and_zero_margin_is_wrong():
    margins = [0.5, -0.3, 0.0, 0.2, 9.0]
    labels = ["A", "B", "A", "B", "tie"]
    # Non-tie pairs: 0.5/A right, -0.3/B right, 0.0/A wrong (no side), 0.2/B wrong.
    assert accuracy_without_ties(margins, labels) == 0.5


@pytest.mark.parametrize(
    "labels",
    [
        ["A", "B", "tie", "same"],
        [1, -1, 0, 0],
        np.array([1, -1, 0, 0]),
        torch.tensor([1, -1, 0, 0]),
        [np.int64(1), np.int32(-1), 0, 0.0],
    ],
)
def test_label_formats_agree(labels):
    assert labels_to_int(labels).tolist() == [1, -1, 0, 0]
    margins = torch.tensor([1.0, -1.0, 0.0, 5.0])
    assert accuracy_without_ties(margins, labels) == 1.0
    assert accuracy_with_ties(margins, labels) == 0.75


def test_bad_label_is_named():
    with pytest.raises(MetricInputError, match=r"labels\[3\] = 'C' is not one of A, B, tie"):
        accuracy_with_ties([1, 2, 3, 4], ["A", "B", "tie", "C"])
    with pytest.raises(MetricInputError, match=r"labels\[0\] = 'invalid'"):
        accuracy_without_ties([1], ["invalid"])
    with pytest.raises(MetricInputError, match=r"labels\[1\] = 2 is not one of"):
        labels_to_int([1, 2])
    with pytest.raises(MetricInputError, match=r"labels\[0\] = True"):
        labels_to_int([True])


def test_length_mismatch_empty_and_nan_are_named():
    with pytest.raises(MetricInputError, match="margins has 3 entries but labels has 2"):
        accuracy_with_ties([1, 2, 3], ["A", "B"])
    with pytest.raises(MetricInputError, match="empty"):
        accuracy_with_ties([], [])
    with pytest.raises(MetricInputError, match=r"margins\[1\] = nan"):
        accuracy_without_ties([1.0, float("nan")], ["A", "B"])
    with pytest.raises(MetricInputError, match="every pair is a human tie"):
        accuracy_without_ties([1.0], ["tie"])
    assert issubclass(MetricInputError, ValueError)


def test_accuracy_by_slice():
    margins = [1.0, -1.0, 1.0, 1.0, 0.5]
    labels = ["A", "A", "B", "B", "tie"]
    slices = ["subject", "subject", "style", "style", "none"]
    assert accuracy_by_slice(margins, labels, slices) == {"all": 0.25, "subject": 0.5, "style": 0.0}
    with pytest.raises(MetricInputError, match="slices has 1 entries but labels has 5"):
        accuracy_by_slice(margins, labels, ["x"])


def _official_cold_start_accuracy(rewards_a, rewards_b, labels):
    """The official cold start's evaluation (its compute_multi_attr_accuracy, on its loader's codes: A 1, B -1, and
    22 for both 'same' and 'invalid'): argmax over [reward A, reward B], correct where it equals the code, over every
    row whose code is not 0."""
    codes = np.array([{"A": 1, "B": -1}.get(label, 22) for label in labels])
    predictions = np.stack([rewards_a, rewards_b], axis=1)
    picks = np.where(np.argmax(predictions, axis=1) == 0, 1, -1)
    valid = codes != 0
    return float(np.sum((picks == codes) * valid) / np.sum(valid))


def test_accuracy_ties_as_errors_exact_and_equal_to_the_official_evaluation():
    from descore_plugin.evaluation.metrics import accuracy_ties_as_errors

    # picks A, B, A (m = 0 picks A), A, B: correct 1st and 5th; the tie and the invalid row count as errors
    assert accuracy_ties_as_errors([1.0, -1.0, 0.0, 2.0, -3.0], ["A", "A", "B", "tie", "B"], num_invalid=1) == 2 / 6
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(1, 20))
        rewards_a, rewards_b = rng.integers(-2, 3, n).astype(float), rng.integers(-2, 3, n).astype(float)
        labels = list(rng.choice(["A", "B", "tie", "invalid"], n))
        kept = [i for i, label in enumerate(labels) if label != "invalid"]
        if not kept:
            continue
        ours = accuracy_ties_as_errors(
            rewards_a[kept] - rewards_b[kept], [labels[i] for i in kept], num_invalid=n - len(kept)
        )
        assert ours == pytest.approx(_official_cold_start_accuracy(rewards_a, rewards_b, labels))
