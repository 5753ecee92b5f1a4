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

__all__ = ["ALL_LABELED", "imbalanced_counts", "frequency_rank", "Split", "make_split", "load_split", "split_seed_sequence"]


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


def _as_ratio(gamma) -> Fraction:
    """``gamma`` as an exact fraction, read as the decimal it is written as (2.2 -> 11/5)."""
    if isinstance(gamma, bool):
        raise UserError(f"lb_imb_ratio must be a number >= 1, not {gamma!r}")
    try:
        if isinstance(gamma, (int, np.integer)):
            frac = Fraction(int(gamma))
        else:
            g = float(gamma)
            if not math.isfinite(g):
                raise ValueError
            frac = Fraction(repr(g))
    except (TypeError, ValueError, OverflowError):
        raise UserError(f"lb_imb_ratio must be a number >= 1, not {gamma!r}") from None
    if frac < 1:
        raise UserError(f"lb_imb_ratio must be >= 1 (N_1 / N_K), not {gamma!r}")
    return frac


def _plain_ratio(gamma):
    """JSON-stable form of gamma: an int when integral (150 and 150.0 are the same split), else a float."""
    frac = _as_ratio(gamma)
    return int(frac) if frac.denominator == 1 else float(frac)


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
    k = _check_num_classes(num_classes)
    g = _as_ratio(gamma)
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

    def __post_init__(self):
        object.__setattr__(self, "lb_idx", _frozen_index(self.lb_idx))
        object.__setattr__(self, "ulb_idx", _frozen_index(self.ulb_idx))
        for name in ("class_order", "lb_counts", "ulb_counts"):
            object.__setattr__(self, name, [int(v) for v in getattr(self, name)])

    def _hashed(self) -> dict:
        return {
            "dataset": str(self.dataset),
            "num_labels": int(self.num_labels),
            "lb_imb_ratio": _plain_ratio(self.lb_imb_ratio),
            "seed": int(self.seed),
            "num_classes": int(self.num_classes),
            "lb_idx": [int(i) for i in self.lb_idx],
            "ulb_idx": [int(i) for i in self.ulb_idx],
        }

    @cached_property
    def sha256(self) -> str:
        """Hex SHA-256 of the canonical JSON of {dataset, num_labels, lb_imb_ratio, seed, num_classes, lb_idx,
        ulb_idx} (sorted keys, no spaces, plain ints)."""
        text = json.dumps(self._hashed(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def manifest(self) -> dict:
        """The hashed JSON object plus ``sha256``, the counts, the class order and ``include_lb_to_ulb``."""
        out = self._hashed()
        out.update(
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
        return (f"Split(dataset={self.dataset!r}, num_labels={self.num_labels}, lb_imb_ratio={self.lb_imb_ratio}, "
                f"seed={self.seed}, lb={self.lb_idx.size}, ulb={self.ulb_idx.size}, sha256={self.sha256[:12]}...)")


def make_split(dataset: str, labels, num_classes, num_labels, lb_imb_ratio, seed,
               include_lb_to_ulb: bool = False) -> Split:
    """Draw the imbalanced labeled set of ``labels`` (training labels, canonical indices).

    The class with rank r in :func:`frequency_rank` gets ``imbalanced_counts(num_labels, num_classes,
    lb_imb_ratio)[r]`` labeled images, drawn uniformly without replacement by its own generator (see the module
    docstring). The unlabeled set is every other training index, or every index with ``include_lb_to_ulb``.
    Raises :class:`UserError` when a class has fewer images than it is asked for.
    """
    if not isinstance(dataset, str) or not dataset:
        raise ValueError(f"dataset must be a non-empty string, not {dataset!r}")
    k = _check_num_classes(num_classes)
    n1 = _as_int(num_labels, "num_labels")
    seed = _as_int(seed, "seed")
    gamma = _plain_ratio(lb_imb_ratio)
    arr = _check_labels(labels, k)
    order = frequency_rank(arr, k)
    sizes = np.bincount(arr, minlength=k)
    if n1 == ALL_LABELED:
        if gamma != 1:
            raise UserError(f"num_labels={ALL_LABELED} labels every training image; lb_imb_ratio must then be 1, "
                            f"not {gamma}")
        return _split_of(dataset, n1, gamma, seed, order, arr, np.arange(arr.size, dtype=np.int64),
                         include_lb_to_ulb)
    counts = imbalanced_counts(n1, k, gamma)

    asked = [0] * k
    for rank, c in enumerate(order):
        asked[c] = counts[rank]
    short = [c for c in order if asked[c] > sizes[c]]
    if short:
        c = short[0]
        listing = ", ".join(f"{_class_name(d)} {int(sizes[d])}" for d in order)
        extra = ""
        if len(short) > 1:
            extra = "; also too small: " + ", ".join(
                f"'{_class_name(d)}' (asks {asked[d]}, has {int(sizes[d])})" for d in short[1:])
        raise UserError(
            f"{dataset}: num_labels={n1} with lb_imb_ratio={gamma} asks {asked[c]} labeled '{_class_name(c)}' "
            f"images but the training set has only {int(sizes[c])}{extra}; class sizes: {listing}")

    root = split_seed_sequence(dataset, n1, gamma, seed)
    chosen = []
    for c in range(k):
        members = np.flatnonzero(arr == c)  # ascending, so the draw depends only on the label array
        if asked[c] == 0:
            continue
        rng = np.random.default_rng(np.random.SeedSequence(root.entropy, spawn_key=(c,)))
        chosen.append(members[rng.permutation(members.size)[: asked[c]]])
    lb_idx = np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)
    return _split_of(dataset, n1, gamma, seed, order, arr, lb_idx, include_lb_to_ulb)


def _split_of(dataset, n1, gamma, seed, order, arr, lb_idx, include_lb_to_ulb) -> Split:
    """The Split with labeled indices ``lb_idx``; unlabeled: every other index (or every index)."""
    if include_lb_to_ulb:
        ulb_idx = np.arange(arr.size, dtype=np.int64)
    else:
        mask = np.ones(arr.size, dtype=bool)
        mask[lb_idx] = False
        ulb_idx = np.flatnonzero(mask)
    k = len(order)
    return Split(
        dataset=dataset, num_labels=n1, lb_imb_ratio=gamma, seed=seed, num_classes=k, lb_idx=lb_idx,
        ulb_idx=ulb_idx, class_order=order, lb_counts=np.bincount(arr[lb_idx], minlength=k).tolist(),
        ulb_counts=np.bincount(arr[ulb_idx], minlength=k).tolist(), include_lb_to_ulb=bool(include_lb_to_ulb))


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
                      include_lb_to_ulb=bool(data.get("include_lb_to_ulb", False)))
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
