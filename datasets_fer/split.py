"""The paper's class-imbalanced labeled/unlabeled split, identical for every algorithm.

ReMoP (section 5.1, following Adsh/CISSL) keeps ``N_k = N_1 * gamma^(-(k-1)/(K-1))`` labeled images of the k-th
class, ``k = 1..K``, where classes are ranked by their *natural training frequency* (on RAF-DB: happy > neutral >
sad > surprise > disgust > anger > fear). Every other training image is unlabeled, so the unlabeled set keeps the
dataset's natural imbalance.

Counts. :func:`imbalanced_counts` floors the exact real value. USB (``semilearn.datasets.utils.make_imbalance_data``)
computes ``mu = (1/gamma)^(1/(K-1))`` and ``int(N1 * mu^k)`` in floating point, which agrees with the exact floor for
every setting in the paper but drops one image where the exact value is an integer, e.g. ``N1=1500, K=7, gamma=9``:
``1500 * 9^(-3/6) = 500`` exactly, USB gets 499.99999... -> 499; we return 500. ``gamma`` is read as the decimal it
is written as (``2.2`` means 11/5, not the nearest binary float).

``num_labels: -1`` (:data:`ALL_LABELED`) labels every training image (Table 5's protocol, with an unlabeled pool
from another dataset); otherwise ``num_labels`` is always ``N_1``, the labeled count of the most frequent class, also when ``gamma == 1`` (every class
then gets ``N_1``). USB instead reads ``num_labels`` as the *total* in its balanced case (``lb_imb_ratio == 1``).

Sampling. Each class draws its ``N_k`` images without replacement from its own generator,
``np.random.default_rng(SeedSequence(H, spawn_key=(class_index,)))`` with ``H`` the SHA-256 of the canonical JSON of
``(dataset, num_labels, lb_imb_ratio, seed)``. Global numpy / torch / python RNG state is neither read nor advanced,
so a split depends only on those four values and the training labels, and every algorithm trained with the same
four values sees the same labeled images. :meth:`Split.save` writes a JSON manifest (indices and their SHA-256) that
:func:`load_split` reads back and verifies.

Unlabeled distribution (USB's ``ulb_num_labels`` / ``ulb_imb_ratio``). By default (``ulb_num_labels: None``) the
unlabeled set is every training image not labeled -- the paper's setting, the dataset's natural imbalance. With
``ulb_num_labels: M_1`` it is a subset with ``M_k = floor(M_1 * |gamma_u|^(-(k-1)/(K-1)))`` unlabeled images of the
class of rank k (:func:`unlabeled_counts`; the same frequency rank as the labeled counts), ``gamma_u =
ulb_imb_ratio``; a negative ratio reverses the order (``M_k`` becomes ``M_{K+1-k}``: the rarest class gets ``M_1``),
as in USB's ``make_imbalance_data``. The settings of the class-imbalanced SSL literature (DASO, ACR, SimPro, CDMAD:
CIFAR-10-LT with ``gamma_l = 100`` and ``gamma_u`` = 100 / 1 / 1/100) are:

* consistent -- ``ulb_imb_ratio = lb_imb_ratio`` (the unlabeled set ranked and shaped like the labeled one);
* uniform -- ``ulb_imb_ratio = 1``: ``M_1`` images of every class;
* reversed -- ``ulb_imb_ratio = -lb_imb_ratio`` (gamma_u = 1/gamma_l): the labeled head class gets the fewest.

Unlike USB, ``ulb_num_labels`` is always ``M_1``, the head count (USB reads it as the *total* when
``ulb_imb_ratio == 1``), as ``num_labels`` is always ``N_1`` here, and as ACR's and DASO's uniform settings give
every class ``M_1``. Each class's unlabeled images are the next ``M_k`` of the same seeded permutation its labeled
images were taken from (disjoint from them by construction; the labeled draw is unchanged by these keys). A class
with fewer than ``M_k`` images left after its labeled ones is refused in one line. With ``include_lb_to_ulb`` the
labeled images are added to the drawn subset. The two keys enter the split's hashed JSON only when ``ulb_num_labels``
is set, so every split drawn without them keeps its sha256; ``ulb_imb_ratio`` is hashed in its normal form (-1 = 1).
"""

from __future__ import annotations

import hashlib
import json
import math
import operator
import os
from dataclasses import dataclass, field
from fractions import Fraction
from functools import cached_property

import numpy as np

from datasets_fer.labels import CANONICAL
from remop_usb.errors import UserError, where
from remop_usb.fileio import write_json_atomic

#: ``num_labels`` value meaning "every training image is labeled" (the paper's Table 5: the whole RAF-DB / FERPlus
#: training set labeled, AffectNet as the unlabeled pool); ``lb_imb_ratio`` must then be 1.
ALL_LABELED = -1

__all__ = ["ALL_LABELED", "imbalanced_counts", "unlabeled_counts", "check_ulb_keys", "frequency_rank", "Split",
           "make_split", "load_split", "split_seed_sequence"]


# --------------------------------------------------------------------------------------------------- helpers


def _as_int(value, name: str) -> int:
    if isinstance(value, bool):
        raise UserError(f"{name} must be an integer, not {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise UserError(f"{name} must be an integer, not {value!r}") from None


def _as_fraction(gamma, name: str, expected: str) -> Fraction:
    """``gamma`` as an exact fraction, read as the decimal it is written as (2.2 -> 11/5); any sign."""
    if isinstance(gamma, bool):
        raise UserError(f"{name} must be {expected}, not {gamma!r}")
    try:
        if isinstance(gamma, (int, np.integer)):
            return Fraction(int(gamma))
        g = float(gamma)
        if not math.isfinite(g):
            raise ValueError
        return Fraction(repr(g))
    except (TypeError, ValueError, OverflowError):
        raise UserError(f"{name} must be {expected}, not {gamma!r}") from None


def _as_ratio(gamma) -> Fraction:
    """``lb_imb_ratio`` as an exact fraction >= 1 (:func:`_as_fraction`)."""
    frac = _as_fraction(gamma, "lb_imb_ratio", "a number >= 1")
    if frac < 1:
        raise UserError(f"lb_imb_ratio must be >= 1 (N_1 / N_K), not {gamma!r}")
    return frac


def _as_ulb_ratio(gamma) -> Fraction:
    """``ulb_imb_ratio`` as an exact fraction with ``|value| >= 1`` (negative: reversed order); -1 is 1."""
    frac = _as_fraction(gamma, "ulb_imb_ratio", "a number >= 1 or <= -1")
    if abs(frac) < 1:
        raise UserError(f"ulb_imb_ratio must be >= 1 (M_1 / M_K) or <= -1 (the same, reversed order), not "
                        f"{gamma!r}")
    return Fraction(1) if abs(frac) == 1 else frac


def _plain(frac: Fraction):
    """JSON-stable form of a ratio: an int when integral, else a float."""
    return int(frac) if frac.denominator == 1 else float(frac)


def _plain_ratio(gamma):
    """JSON-stable form of gamma: an int when integral (150 and 150.0 are the same split), else a float."""
    return _plain(_as_ratio(gamma))


def _plain_ulb_ratio(gamma):
    """JSON-stable form of ulb_imb_ratio (:func:`_as_ulb_ratio`: -1 and 1 are the same split)."""
    return _plain(_as_ulb_ratio(gamma))


def _class_name(c: int) -> str:
    return CANONICAL[c] if 0 <= c < len(CANONICAL) else f"class {c}"


def _check_labels(labels, num_classes: int) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not (np.issubdtype(arr.dtype, np.floating) and np.all(np.mod(arr, 1) == 0)):
            raise ValueError(f"labels must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got min {arr.min()} max {arr.max()}")
    return arr


def _check_num_classes(num_classes) -> int:
    k = _as_int(num_classes, "num_classes")
    if k < 2:
        raise UserError(f"num_classes must be >= 2, not {k}")
    return k


# --------------------------------------------------------------------------------------------------- counts


def imbalanced_counts(n1: int, num_classes: int, gamma: float) -> list[int]:
    """``[N_1, ..., N_K]`` with ``N_k = floor(N1 * gamma^(-(k-1)/(K-1)))``, computed exactly.

    ``N_k`` is the largest integer ``m`` with ``m^(K-1) * gamma^(k-1) <= N1^(K-1)`` (integer arithmetic on the exact
    fraction of ``gamma``), so an exact integer value is never floored one too low; the last is ``floor(N1/gamma)``.
    Example ``(500, 7, 150) -> [500, 216, 94, 40, 17, 7, 3]``; ``gamma == 1`` gives ``[N1] * K``.
    """
    n1 = _as_int(n1, "num_labels")
    if n1 < 1:
        raise UserError(f"num_labels (N_1, labeled images of the most frequent class) must be >= 1, not {n1}")
    return _power_counts(n1, _check_num_classes(num_classes), _as_ratio(gamma))


def _ulb_keys(ulb_num_labels, ulb_imb_ratio) -> tuple:
    """``(M_1 or None, exact ulb_imb_ratio)``; see :func:`check_ulb_keys`."""
    ratio = _as_ulb_ratio(ulb_imb_ratio)
    if ulb_num_labels is None:
        if ratio != 1:
            raise UserError(f"ulb_imb_ratio={ulb_imb_ratio} needs ulb_num_labels (M_1, unlabeled images of the most "
                            f"frequent class); without it the unlabeled set is every training image not labeled")
        return None, ratio
    m1 = _as_int(ulb_num_labels, "ulb_num_labels")
    if m1 < 1:
        raise UserError(f"ulb_num_labels (M_1, unlabeled images of the most frequent class) must be >= 1 or None "
                        f"(every training image not labeled), not {m1}")
    return m1, ratio


def check_ulb_keys(ulb_num_labels, ulb_imb_ratio) -> tuple:
    """``(M_1 or None, ulb_imb_ratio in normal form)``, or a one-line UserError: ``ulb_num_labels`` None or an
    integer >= 1, ``|ulb_imb_ratio| >= 1``, and a ratio other than 1 only with ``ulb_num_labels`` (as USB asserts)."""
    m1, ratio = _ulb_keys(ulb_num_labels, ulb_imb_ratio)
    return m1, _plain(ratio)


def unlabeled_counts(m1: int, num_classes: int, ulb_imb_ratio) -> list[int]:
    """``[M_1, ..., M_K]`` by frequency rank: :func:`imbalanced_counts` of ``(M_1, |ulb_imb_ratio|)``, reversed
    when the ratio is negative. Example ``(40, 7, 10) -> [40, 27, 18, 12, 8, 5, 4]``, ``(40, 7, -10) -> [4, 5, 8,
    12, 18, 27, 40]``, ``(40, 7, 1) -> [40] * 7``."""
    if m1 is None:
        raise UserError("ulb_num_labels (M_1) is not set: the unlabeled set is every training image not labeled")
    m1, ratio = _ulb_keys(m1, ulb_imb_ratio)
    counts = _power_counts(m1, _check_num_classes(num_classes), abs(ratio))
    return counts[::-1] if ratio < 0 else counts


def _power_counts(n1: int, k: int, g: Fraction) -> list[int]:
    """``floor(n1 * g^(-j/(k-1)))`` for ``j = 0..k-1``, exactly (see :func:`imbalanced_counts`)."""
    e = k - 1
    rhs = n1**e
    counts = []
    for j in range(k):
        gj = g**j
        num, den = gj.numerator, gj.denominator  # m^e * num / den <= rhs  <=>  m^e * num <= rhs * den
        bound = rhs * den
        m = max(int(n1 * float(g) ** (-j / e)) - 2, 0)  # float estimate, then fix up exactly
        while (m + 1) ** e * num <= bound:
            m += 1
        while m > 0 and m**e * num > bound:
            m -= 1
        counts.append(m)
    return counts


def frequency_rank(labels, num_classes) -> list[int]:
    """Class indices by natural frequency in ``labels``, most frequent first; ties go to the lower index."""
    k = _check_num_classes(num_classes)
    arr = _check_labels(labels, k)
    sizes = np.bincount(arr, minlength=k)
    return sorted(range(k), key=lambda c: (-int(sizes[c]), c))


# --------------------------------------------------------------------------------------------------- split


def _key_json(dataset: str, num_labels: int, lb_imb_ratio, seed: int) -> str:
    key = {"dataset": str(dataset), "num_labels": int(num_labels), "lb_imb_ratio": _plain_ratio(lb_imb_ratio),
           "seed": int(seed)}
    return json.dumps(key, sort_keys=True, separators=(",", ":"))


def split_seed_sequence(dataset: str, num_labels: int, lb_imb_ratio, seed: int) -> np.random.SeedSequence:
    """The root :class:`numpy.random.SeedSequence` of a split; class ``c`` uses ``spawn_key=(c,)``."""
    digest = hashlib.sha256(_key_json(dataset, num_labels, lb_imb_ratio, seed).encode("utf-8")).digest()
    return np.random.SeedSequence(int.from_bytes(digest, "big"))


def _frozen_index(values) -> np.ndarray:
    arr = np.array(values, dtype=np.int64).reshape(-1)
    arr.sort()
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True, eq=False)
class Split:
    """One labeled/unlabeled split of a training set (indices into its label array).

    ``lb_counts`` / ``ulb_counts`` are per canonical class index; ``class_order`` is the frequency rank that assigned
    ``N_1..N_K``. Two splits are equal when their manifests' SHA-256 (which covers the indices) and counts agree.
    """

    dataset: str
    num_labels: int
    lb_imb_ratio: float
    seed: int
    num_classes: int
    lb_idx: np.ndarray
    ulb_idx: np.ndarray
    class_order: list = field(default_factory=list)
    lb_counts: list = field(default_factory=list)
    ulb_counts: list = field(default_factory=list)
    include_lb_to_ulb: bool = False
    #: M_1 of a drawn unlabeled subset; None: every training image not labeled (see the module docstring)
    ulb_num_labels: int | None = None
    ulb_imb_ratio: float = 1

    def __post_init__(self):
        object.__setattr__(self, "lb_idx", _frozen_index(self.lb_idx))
        object.__setattr__(self, "ulb_idx", _frozen_index(self.ulb_idx))
        for name in ("class_order", "lb_counts", "ulb_counts"):
            object.__setattr__(self, name, [int(v) for v in getattr(self, name)])
        m1, ratio = check_ulb_keys(self.ulb_num_labels, self.ulb_imb_ratio)
        object.__setattr__(self, "ulb_num_labels", m1)
        object.__setattr__(self, "ulb_imb_ratio", ratio)

    def _hashed(self) -> dict:
        hashed = {
            "dataset": str(self.dataset),
            "num_labels": int(self.num_labels),
            "lb_imb_ratio": _plain_ratio(self.lb_imb_ratio),
            "seed": int(self.seed),
            "num_classes": int(self.num_classes),
            "lb_idx": [int(i) for i in self.lb_idx],
            "ulb_idx": [int(i) for i in self.ulb_idx],
        }
        if self.ulb_num_labels is not None:  # absent otherwise: splits drawn without these keys keep their sha256
            hashed.update(ulb_num_labels=self.ulb_num_labels, ulb_imb_ratio=self.ulb_imb_ratio)
        return hashed

    @cached_property
    def sha256(self) -> str:
        """Hex SHA-256 of the canonical JSON of {dataset, num_labels, lb_imb_ratio, seed, num_classes, lb_idx,
        ulb_idx}, plus {ulb_num_labels, ulb_imb_ratio} when ``ulb_num_labels`` is set (sorted keys, no spaces, plain
        ints)."""
        text = json.dumps(self._hashed(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def manifest(self) -> dict:
        """The hashed JSON object plus ``sha256``, the counts, the class order, ``include_lb_to_ulb`` and the
        unlabeled-distribution keys."""
        out = self._hashed()
        out.update(
            ulb_num_labels=self.ulb_num_labels,
            ulb_imb_ratio=self.ulb_imb_ratio,
            sha256=self.sha256,
            class_order=list(self.class_order),
            class_names=[_class_name(c) for c in range(int(self.num_classes))],
            lb_counts=list(self.lb_counts),
            ulb_counts=list(self.ulb_counts),
            num_lb=int(self.lb_idx.size),
            num_ulb=int(self.ulb_idx.size),
            include_lb_to_ulb=bool(self.include_lb_to_ulb),
        )
        return out

    def save(self, path) -> str:
        """Write :meth:`manifest` as JSON to ``path`` atomically (temporary file + ``os.replace``); returns path."""
        return write_json_atomic(path, self.manifest(), sort_keys=True)

    def __eq__(self, other):
        if not isinstance(other, Split):
            return NotImplemented
        return (self.sha256 == other.sha256 and self.lb_counts == other.lb_counts
                and self.ulb_counts == other.ulb_counts and self.class_order == other.class_order)

    def __hash__(self):
        return hash(self.sha256)

    def __repr__(self):
        ulb = "" if self.ulb_num_labels is None else \
            f"ulb_num_labels={self.ulb_num_labels}, ulb_imb_ratio={self.ulb_imb_ratio}, "
        return (f"Split(dataset={self.dataset!r}, num_labels={self.num_labels}, lb_imb_ratio={self.lb_imb_ratio}, "
                f"{ulb}seed={self.seed}, lb={self.lb_idx.size}, ulb={self.ulb_idx.size}, sha256={self.sha256[:12]}...)")


def make_split(dataset: str, labels, num_classes, num_labels, lb_imb_ratio, seed,
               include_lb_to_ulb: bool = False, ulb_num_labels=None, ulb_imb_ratio=1) -> Split:
    """Draw the imbalanced labeled set of ``labels`` (training labels, canonical indices).

    The class with rank r in :func:`frequency_rank` gets ``imbalanced_counts(num_labels, num_classes,
    lb_imb_ratio)[r]`` labeled images, drawn uniformly without replacement by its own generator (see the module
    docstring). The unlabeled set is every other training index; or, with ``ulb_num_labels``, the next
    ``unlabeled_counts(ulb_num_labels, num_classes, ulb_imb_ratio)[r]`` images of the same class permutation; with
    ``include_lb_to_ulb`` the labeled indices are added to it. Raises :class:`UserError` when a class has fewer
    images than it is asked for.
    """
    if not isinstance(dataset, str) or not dataset:
        raise ValueError(f"dataset must be a non-empty string, not {dataset!r}")
    k = _check_num_classes(num_classes)
    n1 = _as_int(num_labels, "num_labels")
    seed = _as_int(seed, "seed")
    gamma = _plain_ratio(lb_imb_ratio)
    m1, ulb_ratio = check_ulb_keys(ulb_num_labels, ulb_imb_ratio)
    ulb_keys = dict(ulb_num_labels=m1, ulb_imb_ratio=ulb_ratio)
    arr = _check_labels(labels, k)
    order = frequency_rank(arr, k)
    sizes = np.bincount(arr, minlength=k)
    if n1 == ALL_LABELED:
        if gamma != 1:
            raise UserError(f"num_labels={ALL_LABELED} labels every training image; lb_imb_ratio must then be 1, "
                            f"not {gamma}")
        if m1 is not None:
            raise UserError(f"ulb_num_labels={m1} draws unlabeled images from {dataset}'s training set, but "
                            f"num_labels={ALL_LABELED} labels all of them; unset ulb_num_labels")
        return _split_of(dataset, n1, gamma, seed, order, arr, np.arange(arr.size, dtype=np.int64),
                         include_lb_to_ulb)
    asked = _by_class(order, imbalanced_counts(n1, k, gamma))
    _refuse_short(f"{dataset}: num_labels={n1} with lb_imb_ratio={gamma}", "labeled", asked, sizes, order,
                  lambda c: f"the training set has only {int(sizes[c])}", "class sizes")
    ulb_asked = None
    if m1 is not None:
        ulb_asked = _by_class(order, unlabeled_counts(m1, k, ulb_ratio))
        left = sizes - np.asarray(asked)
        _refuse_short(f"{dataset}: ulb_num_labels={m1} with ulb_imb_ratio={ulb_ratio}", "unlabeled", ulb_asked,
                      left, order, lambda c: f"only {int(left[c])} remain after its {asked[c]} labeled ones "
                                             f"({int(sizes[c])} in the training set)",
                      "images left after the labeled draw")

    root = split_seed_sequence(dataset, n1, gamma, seed)
    chosen, ulb_chosen = [], []
    for c in range(k):
        wanted = asked[c] + (ulb_asked[c] if ulb_asked else 0)
        if wanted == 0:
            continue
        members = np.flatnonzero(arr == c)  # ascending, so the draw depends only on the label array
        rng = np.random.default_rng(np.random.SeedSequence(root.entropy, spawn_key=(c,)))
        drawn = members[rng.permutation(members.size)]
        chosen.append(drawn[: asked[c]])
        ulb_chosen.append(drawn[asked[c]: wanted])
    lb_idx = _sorted_union(chosen)
    ulb_idx = _sorted_union(ulb_chosen) if m1 is not None else None
    return _split_of(dataset, n1, gamma, seed, order, arr, lb_idx, include_lb_to_ulb, ulb_idx, ulb_keys)


def _by_class(order, counts) -> list:
    """Per class index: the count of its frequency rank."""
    out = [0] * len(order)
    for rank, c in enumerate(order):
        out[c] = counts[rank]
    return out


def _sorted_union(parts) -> np.ndarray:
    return np.sort(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)


def _refuse_short(setting: str, noun: str, asked, available, order, has, listing_title: str) -> None:
    """One UserError line naming the first class (by rank) asked for more images than ``available``, the others
    too small, and the available images per class; nothing when every class has enough."""
    short = [c for c in order if asked[c] > available[c]]
    if not short:
        return
    c = short[0]
    listing = ", ".join(f"{_class_name(d)} {int(available[d])}" for d in order)
    extra = ""
    if len(short) > 1:
        extra = "; also too small: " + ", ".join(
            f"'{_class_name(d)}' (asks {asked[d]}, has {int(available[d])})" for d in short[1:])
    raise UserError(f"{setting} asks {asked[c]} {noun} '{_class_name(c)}' images but {has(c)}{extra}; "
                    f"{listing_title}: {listing}")


def _split_of(dataset, n1, gamma, seed, order, arr, lb_idx, include_lb_to_ulb, ulb_idx=None, ulb_keys=None) -> Split:
    """The Split with labeled indices ``lb_idx``; unlabeled: ``ulb_idx`` (None: every other index), plus the
    labeled ones with ``include_lb_to_ulb``."""
    if ulb_idx is None and include_lb_to_ulb:
        ulb_idx = np.arange(arr.size, dtype=np.int64)
    elif ulb_idx is None:
        mask = np.ones(arr.size, dtype=bool)
        mask[lb_idx] = False
        ulb_idx = np.flatnonzero(mask)
    elif include_lb_to_ulb:
        ulb_idx = np.union1d(ulb_idx, lb_idx)
    k = len(order)
    return Split(
        dataset=dataset, num_labels=n1, lb_imb_ratio=gamma, seed=seed, num_classes=k, lb_idx=lb_idx,
        ulb_idx=ulb_idx, class_order=order, lb_counts=np.bincount(arr[lb_idx], minlength=k).tolist(),
        ulb_counts=np.bincount(arr[ulb_idx], minlength=k).tolist(), include_lb_to_ulb=bool(include_lb_to_ulb),
        **(ulb_keys or {}))


def load_split(path, labels=None) -> Split:
    """Read a manifest written by :meth:`Split.save`, verifying its SHA-256 (and, given ``labels``, its counts and
    that the indices fit). Raises :class:`UserError` for a missing, malformed or tampered file."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        raise UserError(f"split manifest {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read split manifest {path}: {err}") from None
    except json.JSONDecodeError as err:
        raise UserError(f"{where(path, err.lineno)}: split manifest is not valid JSON ({err.msg})") from None
    required = ("dataset", "num_labels", "lb_imb_ratio", "seed", "num_classes", "lb_idx", "ulb_idx", "sha256")
    if not isinstance(data, dict) or any(key not in data for key in required):
        missing = [key for key in required if not isinstance(data, dict) or key not in data]
        raise UserError(f"{path}: split manifest lacks {', '.join(missing)}")
    try:
        split = Split(dataset=data["dataset"], num_labels=data["num_labels"], lb_imb_ratio=data["lb_imb_ratio"],
                      seed=data["seed"], num_classes=data["num_classes"], lb_idx=data["lb_idx"],
                      ulb_idx=data["ulb_idx"], class_order=data.get("class_order", []),
                      lb_counts=data.get("lb_counts", []), ulb_counts=data.get("ulb_counts", []),
                      include_lb_to_ulb=bool(data.get("include_lb_to_ulb", False)),
                      ulb_num_labels=data.get("ulb_num_labels"), ulb_imb_ratio=data.get("ulb_imb_ratio", 1))
        digest = split.sha256
    except (TypeError, ValueError) as err:
        raise UserError(f"{path}: malformed split manifest ({err})") from None
    if digest != data["sha256"]:
        raise UserError(f"{path}: split manifest sha256 {data['sha256']} does not match its contents ({digest})")
    if labels is not None:
        arr = _check_labels(labels, int(split.num_classes))
        for name, idx in (("lb_idx", split.lb_idx), ("ulb_idx", split.ulb_idx)):
            if idx.size and (idx[0] < 0 or idx[-1] >= arr.size):
                raise UserError(f"{path}: {name} has indices outside the {arr.size}-image training set")
        lb = np.bincount(arr[split.lb_idx], minlength=split.num_classes).tolist()
        if split.lb_counts and lb != split.lb_counts:
            raise UserError(f"{path}: labeled counts {lb} on this training set differ from the manifest's "
                            f"{split.lb_counts}; the split was made for other labels")
    return split
