"""Inter- and intra-annotator statistics of landmark positions (pure numpy; no ``slicer``, no scipy).

Input is an array ``positions`` of shape (n_annotators, n_landmarks, dimension): LPS millimetres for 3D
landmarks, pixels for 2D ones, NaN where an annotator did not place a landmark. All distances are in the units
of the input.

Definitions (per image; the fixed and moving images are analysed separately):

* **consensus** of a landmark: mean (or component-wise median, ``consensus="median"``) of its annotators'
  points, outliers excluded.
* **FLE estimate** (fiducial localisation error, RMS over the 3D error vector): with n annotators at a landmark
  the RMS distance to their own mean underestimates the FLE by ``sqrt((n - 1) / n)``; the estimate is corrected
  for that (``fle_estimate = rms_to_consensus * sqrt(n / (n - 1))``). The overall FLE pools the squared
  distances over landmarks with ``sum(n_l - 1)`` degrees of freedom.
* **outlier**: a point farther from the *leave-one-out* consensus (component-wise median of the other
  annotators' points, robust to a second outlier) than the threshold; at each landmark the farthest such point
  is flagged first and the others are tested again without it (so one gross error among three annotators does
  not make the two good points outliers too). With only two annotators at a landmark the
  leave-one-out consensus of each is the other's point, so both get the same distance (the distance between the
  two) and are flagged together, **as a pair**: neither can be blamed. The threshold is ``outlier_distance``
  (when given) and/or ``median + outlier_factor x MAD`` of all leave-one-out distances of the image (MAD = median
  absolute deviation from the median, scaled by 1.4826 so that it estimates the standard deviation of normal
  data: a robust z-score above ``outlier_factor``); the smaller of the two when both are given.
  ``LandmarkStatistics.outlier_rule`` states the rule and the numbers in words.
* **bias** of an annotator: mean vector from the leave-one-out consensus (other annotators' inliers) to the
  annotator's inlier points, tested against zero with Hotelling's T^2 over landmarks; ``biased`` when the
  p-value is below ``bias_alpha``. Biased annotators are found one at a time, most significant first, and left
  out of the others' reference (a biased annotator would otherwise shift everyone else's reference by
  ``-bias / (n - 1)``); this assumes that at most a minority of the annotators is biased.
* **ICC(2,1)** per axis (Shrout & Fleiss 1979, two-way random effects, absolute agreement, single rater) over
  the landmarks that every annotator placed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import CrossModalRegError

AXIS_NAMES = {2: ("x", "y"), 3: ("L", "P", "S")}


# ----------------------------------------------------------------------------------------- special functions
def _betacf(a, b, x, itmax=300, eps=3e-14):
    """Continued fraction of the regularised incomplete beta function (modified Lentz)."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > 1e-300 else 1e-300)
    h = d
    for m in range(1, itmax + 1):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > 1e-300 else 1e-300)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > 1e-300 else 1e-300
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > 1e-300 else 1e-300)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > 1e-300 else 1e-300
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b), the regularised incomplete beta function."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    lbeta = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    front = math.exp(lbeta + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def f_distribution_sf(f: float, d1: float, d2: float) -> float:
    """P(F > f) for an F(d1, d2) variable."""
    if not np.isfinite(f):
        return 0.0
    if f <= 0:
        return 1.0
    return regularized_incomplete_beta(d2 / 2.0, d1 / 2.0, d2 / (d2 + d1 * f))


# ------------------------------------------------------------------------------------------------------ ICC
def icc_2_1(ratings) -> float:
    """ICC(2,1) of Shrout & Fleiss (1979): two-way random effects, absolute agreement, single rater.

    Parameters
    ----------
    ratings : array-like, shape (n_targets, k_raters)
        Complete ratings (no NaN).

    Returns
    -------
    float
        ``(BMS - EMS) / (BMS + (k - 1) EMS + k (JMS - EMS) / n)``.
    """
    y = np.asarray(ratings, dtype=float)
    if y.ndim != 2 or y.shape[0] < 2 or y.shape[1] < 2:
        raise CrossModalRegError(f"ICC(2,1) needs at least 2 targets and 2 raters, got shape {y.shape}")
    if not np.all(np.isfinite(y)):
        raise CrossModalRegError("ICC(2,1) needs complete ratings (no missing values)")
    n, k = y.shape
    grand = y.mean()
    ss_rows = k * np.sum((y.mean(axis=1) - grand) ** 2)
    ss_cols = n * np.sum((y.mean(axis=0) - grand) ** 2)
    ss_total = np.sum((y - grand) ** 2)
    ss_err = ss_total - ss_rows - ss_cols
    bms = ss_rows / (n - 1)
    jms = ss_cols / (k - 1)
    ems = ss_err / ((n - 1) * (k - 1))
    denom = bms + (k - 1) * ems + k * (jms - ems) / n
    return float((bms - ems) / denom) if denom > 0 else float("nan")


# ------------------------------------------------------------------------------------------------ results
@dataclass
class LandmarkStatistics:
    """Inter-annotator statistics of one image. Distances in ``units`` (mm for LPS, or pixels).

    Arrays indexed ``[annotator]``, ``[landmark]`` or ``[annotator, landmark]`` follow ``annotators`` and
    ``labels``.
    """

    annotators: list[str]
    labels: list[str]
    units: str
    consensus_method: str
    positions: np.ndarray            # (A, L, D) input
    consensus: np.ndarray            # (L, D), NaN where no inlier point
    n_annotators: np.ndarray         # (L,) annotators who placed the landmark
    rms_to_consensus: np.ndarray     # (L,)
    fle_estimate: np.ndarray         # (L,) corrected RMS FLE estimate
    max_deviation: np.ndarray        # (L,) largest distance of a point (inlier or not) to the consensus
    max_deviation_annotator: list[str]
    loo_distance: np.ndarray         # (A, L) distance to the leave-one-out median consensus
    outlier: np.ndarray              # (A, L) bool
    outlier_threshold: float        # NaN when no outlier can be flagged (reason in outlier_rule)
    annotator_mean_distance: np.ndarray  # (A,) mean distance to the leave-one-out consensus
    annotator_bias: np.ndarray       # (A, D)
    annotator_bias_pvalue: np.ndarray  # (A,)
    biased: np.ndarray               # (A,) bool
    completeness: np.ndarray         # (A,) fraction of the landmarks placed
    fle_overall: float
    icc_per_axis: np.ndarray         # (D,)
    n_complete_landmarks: int
    overall_completeness: float
    notes: list[str] = field(default_factory=list)
    outlier_rule: str = ""           # the outlier rule and its numbers, in words
    fle_overall_with_outliers: float = float("nan")  # pooled FLE over every point, outliers included
    outliers_excluded: bool = True   # outliers left out of the consensus, the FLE and the bias

    @property
    def outlier_landmarks(self) -> list[str]:
        """Labels with at least one outlier point (with two annotators: the flagged pairs)."""
        return [lab for lab, o in zip(self.labels, self.outlier.any(axis=0)) if o]

    @property
    def biased_annotators(self) -> list[str]:
        return [a for a, b in zip(self.annotators, self.biased) if b]

    @property
    def outlier_points(self) -> list[tuple[str, str]]:
        """(annotator, label) of every outlier point."""
        ai, li = np.nonzero(self.outlier)
        return [(self.annotators[a], self.labels[i]) for a, i in zip(ai, li)]


def _consensus(points, method):
    if len(points) == 0:
        return np.full(points.shape[-1], np.nan)
    return np.median(points, axis=0) if method == "median" else points.mean(axis=0)


MAD_TO_SD = 1.4826  # MAD x 1.4826 estimates the standard deviation of normal data


def outlier_threshold(distances, *, outlier_distance: float | None = None, outlier_factor: float | None = 3.0,
                      units: str = "mm") -> tuple[float | None, str]:
    """Outlier threshold from the leave-one-out distances of an image, and the rule in words.

    Parameters
    ----------
    distances : array-like
        Leave-one-out distances (NaN ignored); with two annotators at a landmark, both carry the pair's distance.
    outlier_distance : float, optional
        Absolute threshold in ``units``.
    outlier_factor : float, optional
        Relative threshold ``median + outlier_factor x 1.4826 x MAD`` of the distances.

    Returns
    -------
    threshold : float or None
        The smaller of the thresholds given; None when no outlier can be flagged (both options off, or no
        distance to take a median of), with the reason in the rule.
    rule : str
    """
    d = np.asarray(distances, dtype=float)
    d = d[np.isfinite(d)]
    parts, values = [], []
    if outlier_distance is not None:
        if not (np.isfinite(outlier_distance) and outlier_distance > 0):
            raise CrossModalRegError(f"the outlier distance must be a positive number, not {outlier_distance}")
        values.append(float(outlier_distance))
        parts.append(f"the outlier distance {float(outlier_distance):.4g} {units}")
    if outlier_factor is not None:
        if not (np.isfinite(outlier_factor) and outlier_factor > 0):
            raise CrossModalRegError(f"the outlier factor must be a positive number, not {outlier_factor}")
        if d.size:
            med = float(np.median(d))
            mad = float(np.median(np.abs(d - med)))
            rel = med + float(outlier_factor) * MAD_TO_SD * mad
            values.append(rel)
            parts.append(f"median + {float(outlier_factor):.4g} x 1.4826 x MAD of the leave-one-out distances "
                         f"({med:.4g} + {float(outlier_factor):.4g} x 1.4826 x {mad:.4g} = {rel:.4g} {units})")
        else:
            parts.append("no relative threshold (no leave-one-out distance: no landmark has two annotators)")
    if not values:
        why = " and ".join(parts) if parts else "outlier detection is off (no outlier distance and no factor)"
        return None, f"no outliers can be flagged: {why}"
    threshold = min(values)
    if len(values) > 1:
        limit = f"{threshold:.4g} {units}, the smaller of " + " and ".join(parts)
    elif outlier_distance is not None:
        limit = parts[0]
    else:
        limit = f"{threshold:.4g} {units} = " + parts[-1]
    return threshold, (f"a point is an outlier when it is farther than {limit} from the leave-one-out median of "
                       "the other annotators' points; with two annotators at a landmark, when the two points are "
                       "farther apart than that, and then both are flagged (a pair: neither can be blamed)")


def _flag_worst_first(points, present, threshold) -> np.ndarray:
    """Outliers of one landmark: the point farthest from the leave-one-out median of the remaining others is
    flagged while that distance exceeds ``threshold``, then the others are tested again without it.

    One gross error among three annotators would otherwise put the two good points half its size away from
    their leave-one-out references (the midpoint with the bad one) and flag them too. When two points remain
    and they are farther apart than the threshold, both are flagged: a pair, neither can be blamed.
    """
    flagged = np.zeros(len(points), bool)
    active = list(np.nonzero(present)[0])
    while len(active) >= 2:
        d = np.array([np.linalg.norm(points[a] - np.median(points[[b for b in active if b != a]], axis=0))
                      for a in active])
        worst = int(np.argmax(d))
        if not d[worst] > threshold:
            break
        if len(active) == 2:
            flagged[active] = True
            break
        flagged[active.pop(worst)] = True
    return flagged


def _farthest(distances, names) -> str:
    """Name(s) of the farthest point: every annotator within rounding of the largest distance, joined by ';'
    (with two annotators and a mean or median consensus the two are always equidistant: both are named)."""
    d = np.asarray(distances, dtype=float)
    top = float(d.max())
    tied = [n for n, v in zip(names, d) if v >= top - 1e-9 * max(top, 1.0)]
    return ";".join(tied)


def landmark_statistics(positions, *, annotators, labels, units: str = "mm", consensus: str = "mean",
                        outlier_distance: float | None = None, outlier_factor: float | None = 3.0,
                        exclude_outliers: bool = True, bias_alpha: float = 0.001,
                        image: str = "") -> LandmarkStatistics:
    """Consensus, FLE, outliers, per-annotator bias and ICC(2,1) for one image (see the module docstring).

    Parameters
    ----------
    positions : array-like, shape (n_annotators, n_landmarks, dimension)
        LPS mm (3D) or pixels (2D); NaN where a landmark was not placed.
    annotators, labels : sequence of str
        Names of the rows and columns of ``positions``.
    consensus : {"mean", "median"}
        Consensus estimator (the median is component-wise).
    outlier_distance : float, optional
        Absolute outlier threshold in ``units``.
    outlier_factor : float, optional
        Relative outlier threshold: ``median + outlier_factor x 1.4826 x MAD`` of the leave-one-out distances
        (see the module docstring; with two annotators the pair's distances).
    exclude_outliers : bool
        Leave outliers out of the consensus, the FLE and the bias.
    bias_alpha : float
        Significance level of the bias test.
    image : str
        Name used in error messages (``"fixed"``, ``"moving"``).

    Raises
    ------
    CrossModalRegError
        Mismatched names, duplicate labels, or an annotator with no points on this image.
    """
    pos = np.asarray(positions, dtype=float)
    where = f" on the {image} image" if image else ""
    if pos.ndim != 3 or pos.shape[2] not in (2, 3):
        raise CrossModalRegError(f"positions must have shape (annotators, landmarks, 2 or 3), got {pos.shape}")
    annotators, labels = list(annotators), list(labels)
    if len(annotators) != pos.shape[0] or len(labels) != pos.shape[1]:
        raise CrossModalRegError(
            f"{len(annotators)} annotator names and {len(labels)} labels for positions of shape {pos.shape}")
    if len(set(labels)) != len(labels):
        dup = sorted({x for x in labels if labels.count(x) > 1})
        raise CrossModalRegError(f"duplicate landmark labels {dup}{where}; labels must be unique")
    if consensus not in ("mean", "median"):
        raise CrossModalRegError(f"consensus must be 'mean' or 'median', not '{consensus}'")
    n_a, n_l, dim = pos.shape
    if n_a < 2:
        raise CrossModalRegError(f"inter-annotator statistics need at least 2 annotators{where}, got {n_a}")
    present = np.all(np.isfinite(pos), axis=2)
    for a in range(n_a):
        if not present[a].any():
            raise CrossModalRegError(
                f"annotator '{annotators[a]}' has no points{where}; finish that annotation or leave the "
                "annotator out of the analysis")

    # Leave-one-out robust consensus and outliers (with one other annotator: the distance between the pair).
    loo = np.full((n_a, n_l), np.nan)
    for i in range(n_l):
        for a in range(n_a):
            if not present[a, i]:
                continue
            others = [b for b in range(n_a) if b != a and present[b, i]]
            if others:
                loo[a, i] = np.linalg.norm(pos[a, i] - np.median(pos[others, i], axis=0))
    threshold, rule = outlier_threshold(loo, outlier_distance=outlier_distance, outlier_factor=outlier_factor,
                                        units=units)
    outlier = np.zeros((n_a, n_l), bool)
    if threshold is not None:
        for i in range(n_l):
            outlier[:, i] = _flag_worst_first(pos[:, i], present[:, i], threshold)
    inlier = present & ~outlier if exclude_outliers else present

    # Consensus and FLE.
    cons = np.full((n_l, dim), np.nan)
    n_present = present.sum(axis=0)
    rms = np.full(n_l, np.nan)
    fle = np.full(n_l, np.nan)
    max_dev = np.full(n_l, np.nan)
    max_dev_who = [""] * n_l
    sq_sum, dof = 0.0, 0
    sq_all, dof_all = 0.0, 0
    for i in range(n_l):
        all_idx = np.nonzero(present[:, i])[0]
        if len(all_idx) >= 2:  # FLE over every point, outliers included (for comparison)
            d_every = np.linalg.norm(pos[all_idx, i] - _consensus(pos[all_idx, i], consensus), axis=1)
            sq_all += float(np.sum(d_every ** 2))
            dof_all += len(all_idx) - 1
        idx = np.nonzero(inlier[:, i])[0]
        if len(idx) == 0:
            continue
        cons[i] = _consensus(pos[idx, i], consensus)
        d_in = np.linalg.norm(pos[idx, i] - cons[i], axis=1)
        rms[i] = math.sqrt(float(np.mean(d_in ** 2)))
        if len(idx) >= 2:
            fle[i] = rms[i] * math.sqrt(len(idx) / (len(idx) - 1))
            sq_sum += float(np.sum(d_in ** 2))
            dof += len(idx) - 1
        d_all = np.linalg.norm(pos[all_idx, i] - cons[i], axis=1)
        max_dev[i] = float(d_all.max())
        max_dev_who[i] = _farthest(d_all, [annotators[j] for j in all_idx])
    fle_overall = math.sqrt(sq_sum / dof) if dof else float("nan")
    fle_all = math.sqrt(sq_all / dof_all) if dof_all else float("nan")

    # Per-annotator bias against the leave-one-out consensus of the others' inliers. A biased annotator would
    # shift the others' reference by -bias/(n-1) and make them look biased too, so biased annotators are found
    # one at a time (most significant first) and left out of the reference of the others (at most a minority).
    flagged: list[int] = []
    while True:
        bias, pvals, mean_dist = _annotator_bias(pos, inlier, consensus, excluded=flagged)
        candidates = [a for a in range(n_a) if a not in flagged and np.isfinite(pvals[a]) and pvals[a] < bias_alpha]
        if not candidates or len(flagged) >= (n_a - 1) // 2:
            break
        flagged.append(min(candidates, key=lambda a: pvals[a]))
    biased = np.zeros(n_a, bool)
    biased[flagged] = True
    biased |= np.isfinite(pvals) & (pvals < bias_alpha)

    complete = np.all(present, axis=0)
    icc = np.full(dim, np.nan)
    notes = []
    no_consensus = [labels[i] for i in range(n_l) if present[:, i].any() and not inlier[:, i].any()]
    if no_consensus:
        notes.append(f"{len(no_consensus)} landmark(s) have no consensus because every annotation of them is an "
                     f"outlier (with two annotators: the pair disagrees beyond the threshold): "
                     f"{', '.join(no_consensus)}; resolve them (a third annotator, or re-annotation)")
    if complete.sum() >= 2:
        for k in range(dim):
            icc[k] = icc_2_1(pos[:, complete, k].T)
    else:
        notes.append("ICC not computed: fewer than 2 landmarks were placed by every annotator")
    return LandmarkStatistics(
        annotators=annotators, labels=labels, units=units, consensus_method=consensus, positions=pos,
        consensus=cons, n_annotators=n_present, rms_to_consensus=rms, fle_estimate=fle, max_deviation=max_dev,
        max_deviation_annotator=max_dev_who, loo_distance=loo, outlier=outlier,
        outlier_threshold=float("nan") if threshold is None else threshold, outlier_rule=rule,
        fle_overall_with_outliers=fle_all, outliers_excluded=bool(exclude_outliers),
        annotator_mean_distance=mean_dist, annotator_bias=bias, annotator_bias_pvalue=pvals, biased=biased,
        completeness=present.sum(axis=1) / n_l, fle_overall=fle_overall, icc_per_axis=icc,
        n_complete_landmarks=int(complete.sum()), overall_completeness=float(present.mean()), notes=notes,
    )


def _annotator_bias(pos, inlier, consensus, *, excluded):
    """Bias vector, Hotelling p-value and mean distance of each annotator against the leave-one-out consensus of
    the other annotators' inliers, leaving the ``excluded`` annotators out of every reference."""
    n_a, n_l, dim = pos.shape
    bias = np.full((n_a, dim), np.nan)
    pvals = np.full(n_a, np.nan)
    mean_dist = np.full(n_a, np.nan)
    for a in range(n_a):
        resid = []
        for i in range(n_l):
            if not inlier[a, i]:
                continue
            others = [b for b in range(n_a) if b != a and b not in excluded and inlier[b, i]]
            if others:
                resid.append(pos[a, i] - _consensus(pos[others, i], consensus))
        if not resid:
            continue
        r = np.array(resid)
        bias[a] = r.mean(axis=0)
        mean_dist[a] = float(np.mean(np.linalg.norm(r, axis=1)))
        m = len(r)
        if m > dim:
            # Hotelling T^2 in the subspace where the residuals vary (a 3D protocol on a single slice has z == 0).
            evals, evecs = np.linalg.eigh(np.cov(r, rowvar=False))
            keep = evals > 1e-12 * max(float(evals.max()), 1e-300)
            k = int(keep.sum())
            if k and m > k:
                t2 = m * float(np.sum((evecs[:, keep].T @ bias[a]) ** 2 / evals[keep]))
                fstat = t2 * (m - k) / (k * (m - 1))
                pvals[a] = f_distribution_sf(fstat, k, m - k)
    return bias, pvals, mean_dist


@dataclass
class Repeatability:
    """Intra-annotator repeatability from two annotations of the same image by the same annotator.

    ``rms_difference`` is the RMS distance between the two placements of a landmark; since both carry the
    annotator's localisation error, ``intra_fle`` = ``rms_difference / sqrt(2)``. Units as the input.
    """

    annotators: list[str]
    n_pairs: np.ndarray
    rms_difference: np.ndarray
    intra_fle: np.ndarray
    max_difference: np.ndarray
    units: str = "mm"


def repeatability(first, second, *, annotators, units: str = "mm") -> Repeatability:
    """Repeatability per annotator from two arrays (n_annotators, n_landmarks, dim) of repeats 1 and 2."""
    a1, a2 = np.asarray(first, float), np.asarray(second, float)
    if a1.shape != a2.shape:
        raise CrossModalRegError(f"the two repeats have different shapes {a1.shape} and {a2.shape}")
    d = np.linalg.norm(a1 - a2, axis=2)
    n = np.sum(np.isfinite(d), axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        rms = np.sqrt(np.nansum(d ** 2, axis=1) / n)
    rms[n == 0] = np.nan
    mx = np.array([np.nanmax(row) if np.isfinite(row).any() else np.nan for row in d])
    return Repeatability(list(annotators), n, rms, rms / math.sqrt(2.0), mx, units)
