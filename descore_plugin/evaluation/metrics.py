"""Preference accuracy of a reward model against human pair labels.

Both metrics take the margins m = score(A) - score(B) of a reward model and the human labels h of the same
pairs. Labels may be the strings "A", "B", "tie" (or "same", the spelling of the DeScore and VideoAlign CSVs)
or the integers 1 (A better), -1 (B better), 0 (tie). Pairs labelled "invalid" must be dropped before scoring.

- `accuracy_without_ties`: over the pairs humans did not tie, the fraction where sign(m) agrees with h;
  m == 0 counts as wrong (the model failed to pick a side).
- `accuracy_with_ties`: tie calibration of "Ties Matter" (Deutsch et al., arXiv 2305.14324, Algorithm 1).
  The model predicts a tie iff |m| <= eps; accuracy(eps) = (correct non-ties + pairs both tie) / N, and the
  reported value is the maximum over eps. The candidates are eps = -1 (the model never ties) and every
  distinct |m| value; equal |m| values are one candidate, since no threshold can tie some of them and not
  the others. One sort makes the sweep O(N log N).
"""

import numpy as np
import torch

from descore_plugin.utils.errors import UserError

__all__ = [
    "accuracy_without_ties",
    "accuracy_with_ties",
    "accuracy_with_ties_and_threshold",
    "accuracy_ties_as_errors",
    "accuracy_by_slice",
    "labels_to_int",
]

_STRING_LABELS = {"A": 1, "B": -1, "tie": 0, "same": 0}


class MetricInputError(UserError):
    """Margins or labels that cannot be scored (bad label, NaN margin, length mismatch, empty input)."""


def labels_to_int(labels) -> np.ndarray:
    """Map labels ("A"/"B"/"tie"/"same" or 1/-1/0) to an int64 array of 1 / -1 / 0.

    Raises MetricInputError naming the first bad entry, e.g. "labels[3] = 'C' is not one of A, B, tie".
    """
    if isinstance(labels, (str, bytes)):
        raise MetricInputError(f"labels must be a sequence of labels, got the single string {labels!r}")
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().tolist()
    codes = np.empty(len(labels), dtype=np.int64)
    for index, label in enumerate(labels):
        if isinstance(label, np.generic):
            label = label.item()
        if isinstance(label, str) and label in _STRING_LABELS:
            codes[index] = _STRING_LABELS[label]
        elif isinstance(label, (int, float)) and not isinstance(label, bool) and label in (1, -1, 0):
            codes[index] = int(label)
        else:
            raise MetricInputError(
                f"labels[{index}] = {label!r} is not one of A, B, tie (also accepted: 'same', 1, -1, 0); "
                "drop pairs labelled 'invalid' before scoring"
            )
    return codes


def _margins_and_labels(margins, labels) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(margins, torch.Tensor):
        margins = margins.detach().to(device="cpu", dtype=torch.float64).numpy()
    margins = np.asarray(margins, dtype=np.float64)
    if margins.ndim != 1:
        raise MetricInputError(
            f"margins must be one-dimensional (one score_A - score_B per pair), got shape {margins.shape}"
        )
    codes = labels_to_int(labels)
    if len(margins) != len(codes):
        raise MetricInputError(
            f"margins has {len(margins)} entries but labels has {len(codes)}; they must match pair for pair"
        )
    if len(margins) == 0:
        raise MetricInputError("margins and labels are empty: there is nothing to score")
    not_finite = np.flatnonzero(~np.isfinite(margins))
    if len(not_finite):
        index = int(not_finite[0])
        raise MetricInputError(f"margins[{index}] = {margins[index]} is not a finite number")
    return margins, codes


def accuracy_without_ties(margins, labels) -> float:
    """Fraction of human non-tie pairs where sign(margin) agrees with the label; margin == 0 counts as wrong.

    margins: score_A - score_B per pair (list, numpy array or tensor).
    labels: "A" / "B" / "tie" / "same" or 1 / -1 / 0 per pair; the tie pairs are left out.
    """
    margins, codes = _margins_and_labels(margins, labels)
    decided = codes != 0
    if not decided.any():
        raise MetricInputError("every pair is a human tie: accuracy without ties has no pairs to score")
    correct = np.sign(margins[decided]) == codes[decided]
    return float(correct.mean())


def accuracy_ties_as_errors(margins, labels, num_invalid: int = 0) -> float:
    """The official cold start's evaluation figure (its `compute_multi_attr_accuracy`), a compatibility number: the
    model picks A when margin >= 0 (argmax over [A, B] takes A on equality), else B; a pair counts as correct when
    that pick equals the human label, so every human tie, and each of `num_invalid` rows labelled "invalid" (its
    loader gives both one "no verdict" code), counts as an error. Divided by all pairs, those included."""
    margins, codes = _margins_and_labels(margins, labels)
    picks = np.where(margins >= 0, 1, -1)
    return float((picks == codes).sum() / (len(codes) + num_invalid))


def accuracy_with_ties_and_threshold(margins, labels, *, videoalign_compat: bool = False) -> tuple[float, float]:
    """Tie-calibrated accuracy and the threshold eps that reaches it (Ties Matter, arXiv 2305.14324, Alg. 1).

    The model predicts a tie iff |m| <= eps, otherwise sign(m). accuracy(eps) = (#{human non-tie, model
    non-tie, signs agree} + #{human tie, model tie}) / N. Candidates: eps = -1 (the model never ties) and
    every distinct |m|. Returns (max accuracy, smallest eps reaching it); eps = -1.0 means "no model ties".

    videoalign_compat=True reproduces the VideoAlign implementation, for comparison with published numbers.
    That implementation walks the pairs sorted by |m| (stable order) and scores the state after each single
    pair, so with equal |m| values (quantised scores, exact zeros) it also scores states where only part of
    a group of equal |m| is tied. No threshold produces such a state, so it can report more than any real
    threshold reaches. It also never scores eps = -1, so it misses "the model never ties" when that is best.
    """
    margins, codes = _margins_and_labels(margins, labels)
    magnitudes = np.abs(margins)
    # Per pair: would it count as correct if the model does not tie it / if the model ties it?
    correct_if_not_tied = (codes != 0) & (np.sign(margins) == codes)
    correct_if_tied = codes == 0
    order = np.argsort(magnitudes, kind="stable")
    sorted_magnitudes = magnitudes[order]
    # Tying one more pair (in sorted order) changes the count of correct pairs by this much.
    gain = correct_if_tied[order].astype(np.int64) - correct_if_not_tied[order].astype(np.int64)
    correct_after = int(correct_if_not_tied.sum()) + np.cumsum(gain)  # [k]: pairs order[:k+1] tied
    if videoalign_compat:
        best = int(np.argmax(correct_after))  # first maximum, as VideoAlign's strict ">" update keeps
        return float(correct_after[best] / len(margins)), float(sorted_magnitudes[best])
    # eps = |m| of a group ties the whole group: only the state after each group's last member is reachable.
    group_ends = np.flatnonzero(np.append(sorted_magnitudes[1:] != sorted_magnitudes[:-1], True))
    candidates = np.concatenate([[int(correct_if_not_tied.sum())], correct_after[group_ends]])
    thresholds = np.concatenate([[-1.0], sorted_magnitudes[group_ends]])
    best = int(np.argmax(candidates))
    return float(candidates[best] / len(margins)), float(thresholds[best])


def accuracy_with_ties(margins, labels, *, videoalign_compat: bool = False) -> float:
    """Tie-calibrated pairwise accuracy (Ties Matter, arXiv 2305.14324, Algorithm 1); see
    `accuracy_with_ties_and_threshold` for the definition and for what `videoalign_compat` changes."""
    accuracy, _ = accuracy_with_ties_and_threshold(margins, labels, videoalign_compat=videoalign_compat)
    return accuracy


def accuracy_by_slice(margins, labels, slices) -> dict[str, float]:
    """Accuracy without ties per slice tag (e.g. the synthetic world's differing defect), plus "all".

    Overall accuracy can hide a blind spot (a colour-blind model still scores ~0.9 on the synthetic world);
    per-slice accuracy shows it. Slices whose pairs are all human ties are left out.
    """
    margins, codes = _margins_and_labels(margins, labels)
    slices = list(slices)
    if len(slices) != len(codes):
        raise MetricInputError(
            f"slices has {len(slices)} entries but labels has {len(codes)}; they must match pair for pair"
        )
    result = {"all": accuracy_without_ties(margins, codes)}
    for name in sorted(set(slices)):
        members = np.array([tag == name for tag in slices])
        if (codes[members] != 0).any():
            result[name] = accuracy_without_ties(margins[members], codes[members])
    return result
