"""Deterministic synthetic facial-expression data, written in the real datasets' on-disk layouts.

Real FER datasets are licensed and cannot be downloaded automatically, so the demo and the tests use procedurally
drawn cartoon faces instead. The pieces:

* :func:`render_face` draws one face (an RGB ``PIL.Image``) showing a canonical expression (``labels.CANONICAL``),
  with random identity, pose, scale, lighting, noise and per-sample expression intensity. Fear/surprise and
  sad/neutral are deliberately confusable (shared cues, overlapping intensities); every class is still learnable.
* :func:`iter_faces` renders a list of canonical labels reproducibly: image ``i`` depends only on
  ``(seed, stream, i, label, size)``, never on global RNG state or on the other images. Layout writers (RAF-DB here;
  FERPlus, CK+ or AffectNet later) only decide labels, names and file formats.
* :func:`largest_remainder` scales a reference class histogram to an exact total.
* :func:`write_rafdb` writes RAF-DB's basic layout atomically (built in a hidden temporary directory, renamed into
  place at the end), with a marker file :data:`MARKER_NAME` describing the generator, written last;
  :func:`ensure_demo_rafdb` creates it on first use.

Same arguments give byte-identical files (for a given Pillow/libjpeg build, which does the JPEG encoding).
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import tempfile
import zlib
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

from remop_usb.errors import UserError

from .labels import CANONICAL, RAFDB_NAMES, RAFDB_TO_CANONICAL

GENERATOR = "remop-usb synthetic FER"
#: Bump when the rendering or a layout changes, so a stale demo dataset can be recognised from its marker.
VERSION = 2
MARKER_NAME = "SYNTHETIC_FER.json"
JPEG_QUALITY = 95

#: RAF-DB basic (single-label) set, images per RAF code 1..7 in the official partition.
RAFDB_TRAIN_COUNTS = {1: 1290, 2: 281, 3: 717, 4: 4772, 5: 1982, 6: 705, 7: 2524}
RAFDB_TEST_COUNTS = {1: 329, 2: 74, 3: 160, 4: 1185, 5: 478, 6: 162, 7: 680}

# ---------------------------------------------------------------------------------------------------------------
# Expressions
# ---------------------------------------------------------------------------------------------------------------

#: Parameters of the face, as offsets from a neutral face (units: face half-height / half-width).
#:   curve    mouth-corner lift (+ smile, - frown)          open    mouth opening
#:   width    mouth half-width change                        asym    one-sided corner lift (contempt)
#:   snarl    one-sided upper-lip raise (disgust)            press   lips pressed thin
#:   teeth    show upper teeth when open                     raise   both brows up
#:   inner    inner brow ends up (+ sad/fear, - anger's V)   pinch   brows drawn together
#:   eye      eye openness change                            wrinkle nose wrinkle (disgust)
#:   frown    vertical lines between the brows               forehead horizontal forehead lines
#:   cheek    smile folds / raised cheeks
_PARAMS = ("curve", "open", "width", "asym", "snarl", "press", "teeth", "raise", "inner", "pinch", "eye",
           "wrinkle", "frown", "forehead", "cheek")

_EXPRESSION_DELTAS: Dict[int, Dict[str, float]] = {
    0: {},  # neutral
    1: {"curve": 0.20, "open": 0.08, "width": 0.11, "teeth": 1.0, "eye": -0.45, "raise": 0.02, "cheek": 1.0},
    2: {"curve": -0.11, "width": -0.04, "inner": 0.12, "eye": -0.22, "pinch": 0.02},
    3: {"open": 0.32, "width": -0.13, "raise": 0.16, "inner": 0.02, "eye": 0.60, "forehead": 1.0},
    4: {"open": 0.16, "width": 0.06, "curve": -0.05, "raise": 0.10, "inner": 0.10, "pinch": 0.06, "eye": 0.55,
        "teeth": 0.6, "forehead": 0.6},
    5: {"snarl": 0.18, "curve": -0.07, "open": 0.02, "raise": -0.07, "inner": -0.05, "pinch": 0.03, "eye": -0.40,
        "wrinkle": 1.0},
    6: {"curve": -0.03, "width": -0.08, "press": 1.0, "raise": -0.10, "inner": -0.18, "pinch": 0.08, "eye": -0.40,
        "frown": 1.0},
    7: {"asym": 0.17, "width": 0.02, "eye": -0.12, "press": 0.4},
}


def _expression_params(expression: int, intensity: float, rng: np.random.Generator) -> Dict[str, float]:
    """Neutral + intensity * expression offsets + a per-person 'resting face' jitter."""
    d = _EXPRESSION_DELTAS[expression]
    p = {k: intensity * d.get(k, 0.0) for k in _PARAMS}
    # Resting-face variation: it is what makes weak sad faces look neutral (and weak fear look like surprise).
    p["curve"] += rng.normal(0.0, 0.018)
    p["open"] = max(0.0, p["open"] + rng.normal(0.0, 0.012))
    p["width"] += rng.normal(0.0, 0.02)
    p["raise"] += rng.normal(0.0, 0.015)
    p["inner"] += rng.normal(0.0, 0.015)
    p["pinch"] += rng.normal(0.0, 0.01)
    p["eye"] += rng.normal(0.0, 0.08)
    return p


# ---------------------------------------------------------------------------------------------------------------
# Renderer
# ---------------------------------------------------------------------------------------------------------------


def _mix(a, b, t):
    return tuple(int(round(x + (y - x) * t)) for x, y in zip(a, b))


def _scale(c, f, alpha=None):
    out = tuple(int(max(0, min(255, round(x * f)))) for x in c)
    return out if alpha is None else out + (int(alpha),)


@functools.lru_cache(maxsize=8)
def _unit_grid(size: int):
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    return yy, xx


def _gaussian_blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of an (H, W, C) float array (edges replicated); cheap for the small sigmas used."""
    r = max(1, int(math.ceil(2.5 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1, dtype=np.float32) / np.float32(sigma)) ** 2)
    k /= k.sum()
    h, w = a.shape[:2]
    p = np.pad(a, ((r, r), (0, 0), (0, 0)), mode="edge")
    a = sum(k[j] * p[j:j + h] for j in range(2 * r + 1))
    p = np.pad(a, ((0, 0), (r, r), (0, 0)), mode="edge")
    return sum(k[j] * p[:, j:j + w] for j in range(2 * r + 1))


def render_face(expression: int, rng: np.random.Generator, size: int = 100, *,
                intensity: Optional[float] = None) -> Image.Image:
    """Draw a ``size`` x ``size`` RGB face showing canonical ``expression`` (0..7, see ``labels.CANONICAL``).

    Everything random comes from ``rng``, consumed in a fixed order, so equal generator states give equal images.
    ``intensity`` (0..1) fixes the expression strength; by default it is drawn per sample (some faces are weak).
    """
    if not (isinstance(expression, (int, np.integer)) and 0 <= int(expression) < len(CANONICAL)):
        raise ValueError(f"expression must be a canonical index 0..{len(CANONICAL) - 1}, not {expression!r}")
    if not (isinstance(size, (int, np.integer)) and size >= 16):
        raise ValueError(f"size must be an integer >= 16, not {size!r}")
    expression, size = int(expression), int(size)

    # --- draws, in a fixed order -----------------------------------------------------------------------------
    drawn = float(np.clip(rng.beta(2.5, 1.2), 0.12, 1.0))  # always drawn, so `intensity` keeps the same identity
    intensity = drawn if intensity is None else intensity
    p = _expression_params(expression, float(intensity), rng)

    k = 2 if size >= 64 else int(math.ceil(128 / size))  # supersampling factor
    R = size * k
    scale = rng.uniform(1.0, 1.25)  # aligned crops: the face fills the frame, as after MTCNN alignment
    fh = 0.45 * R * scale * rng.uniform(0.94, 1.06)  # face half-height
    fw = fh * rng.uniform(0.70, 0.84)  # face half-width
    cx = R * (0.5 + rng.uniform(-0.05, 0.05))
    cy = R * (0.52 + rng.uniform(-0.04, 0.04))
    angle = rng.uniform(-15.0, 15.0)
    yaw = rng.uniform(-1.0, 1.0)

    skin = _mix((242, 208, 182), (92, 58, 40), rng.uniform(0.0, 1.0))
    skin = tuple(int(np.clip(c + rng.normal(0, 6), 0, 255)) for c in skin)
    bg = tuple(int(v) for v in rng.integers(30, 230, size=3))
    hair_col = [(25, 20, 18), (70, 45, 25), (120, 80, 40), (200, 170, 110), (150, 150, 150)][int(rng.integers(0, 5))]
    hair_style = int(rng.integers(0, 4))  # 0 none, 1 short, 2 long, 3 short with side part
    hairline = rng.uniform(-0.08, 0.04)
    brow_col = _mix(hair_col, (20, 15, 12), 0.5)
    iris_col = tuple(int(v) for v in rng.integers(20, 110, size=3))
    eye_sep = rng.uniform(0.31, 0.40)
    eye_y = -0.12 + rng.uniform(-0.03, 0.03)
    brow_w = rng.uniform(0.045, 0.08)
    mouth_y = 0.50 + rng.uniform(-0.03, 0.03)
    mouth_w0 = rng.uniform(0.26, 0.32)
    lip_w = rng.uniform(0.03, 0.05)
    asym_side = 1.0 if rng.random() < 0.5 else -1.0
    snarl_side = 1.0 if rng.random() < 0.5 else -1.0

    grad_theta = rng.uniform(0, 2 * math.pi)
    grad_strength = rng.uniform(0.0, 0.45)
    brightness = rng.uniform(-22, 22)
    contrast = rng.uniform(0.75, 1.15)
    white_bal = rng.uniform(0.93, 1.07, size=3)
    noise_sigma = rng.uniform(1.5, 6.0)
    blur = rng.uniform(0.25, 0.6) * size / 64.0
    noise = rng.standard_normal((size, size, 3), dtype=np.float32)

    # --- geometry ---------------------------------------------------------------------------------------------
    shift = 0.10 * yaw  # features slide sideways with a slight head turn

    def P(x, y, depth=1.0):
        return (cx + (x + shift * depth) * fw, cy + y * fh)

    def W(t):  # a stroke width given in face half-heights
        return max(1, int(round(t * fh)))

    img = Image.new("RGB", (R, R), bg)
    dr = ImageDraw.Draw(img)  # opaque shapes (fast)
    da = ImageDraw.Draw(img, "RGBA")  # translucent wrinkles and folds
    ol = _scale(skin, 0.78)

    # --- head ---------------------------------------------------------------------------------------------------
    if hair_style == 2:  # long hair behind the head
        dr.ellipse([cx - 1.22 * fw, cy - 1.12 * fh, cx + 1.22 * fw, cy + 0.75 * fh], fill=hair_col)
    neck_w = 0.5 * fw
    dr.rectangle([cx - neck_w, cy + 0.6 * fh, cx + neck_w, R + 2], fill=_scale(skin, 0.85))
    for s in (-1, 1):  # ears
        ex = cx + s * (0.97 - 0.06 * yaw * s) * fw
        dr.ellipse([ex - 0.13 * fw, cy - 0.22 * fh, ex + 0.13 * fw, cy + 0.12 * fh], fill=_scale(skin, 0.93),
                   outline=ol)
    dr.ellipse([cx - fw, cy - fh, cx + fw, cy + fh], fill=skin, outline=ol, width=W(0.012))
    if hair_style in (1, 2, 3):  # hair: the top of a slightly larger head ellipse, cut at the hairline
        hx, hy, hcy = 1.06 * fw, 1.07 * fh, cy - 0.04 * fh
        line = (hcy - (cy + (-0.58 + hairline) * fh)) / hy  # hairline height in units of hy
        alpha = math.degrees(math.asin(min(0.95, max(0.2, line))))
        tilt = 0.0 if hair_style != 3 else (12.0 if yaw >= 0 else -12.0)  # side parting: a tilted hairline
        dr.chord([cx - hx, hcy - hy, cx + hx, hcy + hy], 180 + alpha + tilt, 360 - alpha + tilt, fill=hair_col)

    # --- brows ------------------------------------------------------------------------------------------------
    raise_, inner, pinch = p["raise"], p["inner"], p["pinch"]
    brow_base = eye_y - 0.22
    for s in (-1, 1):
        xi, xm, xo = 0.10 - pinch, 0.28 - 0.5 * pinch, 0.47
        xi, xm, xo = xi + eye_sep - 0.35, xm + eye_sep - 0.35, xo + eye_sep - 0.35
        yo = brow_base - raise_ + 0.02
        ym = brow_base - raise_ - 0.035 - 0.3 * max(0.0, raise_)
        yi = brow_base - raise_ - inner
        pts = [P(s * xi, yi), P(s * xm, ym), P(s * xo, yo)]
        dr.line(pts, fill=brow_col, width=W(brow_w), joint="curve")
    if p["frown"] > 0.05:
        a = int(min(1.0, p["frown"]) * 130)
        for s in (-1, 1):
            da.line([P(s * 0.035, brow_base + 0.02), P(s * 0.05, brow_base + 0.13)], fill=_scale(skin, 0.6, a),
                    width=W(0.015))
    if p["forehead"] > 0.05:
        a = int(min(1.0, p["forehead"]) * 110)
        for j in range(2):
            y = brow_base - 0.17 - 0.08 * j - raise_ * 0.4
            da.arc([cx - 0.38 * fw + shift * fw, cy + (y - 0.06) * fh, cx + 0.38 * fw + shift * fw,
                    cy + (y + 0.06) * fh], 200, 340, fill=_scale(skin, 0.65, a), width=W(0.012))

    # --- eyes -------------------------------------------------------------------------------------------------
    eye_open = float(np.clip(1.0 + p["eye"], 0.18, 1.9))
    ew, eh = 0.14, 0.08
    n = 9
    us = np.linspace(-1.0, 1.0, n)
    for s in (-1, 1):
        ex = s * eye_sep
        up = eh * eye_open
        lo = eh * (0.6 + 0.4 * eye_open) * (1.0 - 0.5 * max(0.0, p["cheek"] * 0.6))
        top = [P(ex + ew * u, eye_y - up * math.sqrt(1 - u * u) ** 0.8) for u in us]
        bot = [P(ex + ew * u, eye_y + lo * math.sqrt(1 - u * u) ** 0.8) for u in us[::-1]]
        dr.polygon(top + bot, fill=(238, 236, 230))
        # iris: a circle squashed to fit the opening
        ir = 0.062 * fh
        icx, icy = P(ex + 0.02 * yaw, eye_y)
        iry = min(ir, 0.92 * min(up, lo) * fh + 0.3)
        dr.ellipse([icx - ir, icy - iry, icx + ir, icy + iry], fill=iris_col)
        pr, pry = 0.45 * ir, 0.45 * iry
        dr.ellipse([icx - pr, icy - pry, icx + pr, icy + pry], fill=(10, 10, 10))
        dr.line(top, fill=(30, 22, 20), width=W(0.022), joint="curve")  # upper lid / lashes
        dr.line(bot, fill=_scale(skin, 0.6), width=W(0.010))

    # --- nose -------------------------------------------------------------------------------------------------
    wr = p["wrinkle"]
    nose_y = 0.24 - 0.03 * wr
    nose_ol = _scale(skin, 0.62)
    dr.line([P(0.05, eye_y + 0.04, 1.3), P(0.07, nose_y - 0.04, 1.5)], fill=_scale(skin, 0.8), width=W(0.014))
    for s in (-1, 1):
        nx = s * (0.065 + 0.02 * wr)
        a, b = P(nx - 0.035, nose_y - 0.018, 1.5), P(nx + 0.035, nose_y + 0.018, 1.5)
        dr.ellipse([a[0], a[1], b[0], b[1]], fill=nose_ol)
    if wr > 0.05:
        a = int(min(1.0, wr) * 150)
        for j in range(3):
            y = eye_y + 0.02 + 0.045 * j
            da.arc([P(-0.10, y - 0.03, 1.2)[0], P(0, y - 0.03)[1], P(0.10, y + 0.03, 1.2)[0], P(0, y + 0.03)[1]],
                   200, 340, fill=_scale(skin, 0.55, a), width=W(0.014))

    # --- mouth ------------------------------------------------------------------------------------------------
    mw = max(0.08, mouth_w0 + p["width"])
    curve, opn, asym, snarl, press = p["curve"], p["open"], p["asym"], p["snarl"], p["press"]
    lip = _mix(_scale(skin, 0.68), (150, 40, 45), 0.35)
    m = 15
    uu = np.linspace(-1.0, 1.0, m)
    xs, yc, yu, yl = [], [], [], []
    for u in uu:
        side = max(0.0, asym_side * u)
        x = u * mw + asym * 0.4 * side * asym_side
        c = mouth_y - curve * u * u - asym * side ** 2
        e = math.sqrt(max(0.0, 1 - u * u))
        bump = snarl * math.exp(-((u - 0.35 * snarl_side) / 0.45) ** 2)
        xs.append(x)
        yc.append(c)
        yu.append(c - 0.35 * opn * e - bump)
        yl.append(c + 0.65 * opn * e)
    gap = max(b - a for a, b in zip(yu, yl))
    if gap > 0.02:
        upper = [P(x, y, 0.8) for x, y in zip(xs, yu)]
        lower = [P(x, y, 0.8) for x, y in zip(xs, yl)]
        dr.polygon(upper + lower[::-1], fill=(55, 18, 22))
        if p["teeth"] > 0.3 and gap > 0.04:
            tb = [P(x, a + min(0.06, 0.4 * (b - a)), 0.8) for x, a, b in zip(xs, yu, yl)]
            dr.polygon(upper + tb[::-1], fill=(236, 234, 226))
        dr.line(upper, fill=lip, width=W(lip_w * (1 - 0.5 * press)), joint="curve")
        dr.line(lower, fill=lip, width=W(lip_w * 1.4 * (1 - 0.5 * press)), joint="curve")
    else:
        line = [P(x, y, 0.8) for x, y in zip(xs, yc)]
        col = _mix(lip, (40, 20, 20), 0.35 * min(1.0, press))
        dr.line(line, fill=col, width=W(lip_w * (1.3 - 0.7 * min(1.0, press))), joint="curve")
    if p["cheek"] > 0.05:  # smile folds from the nose to the mouth corners
        a = int(min(1.0, p["cheek"]) * 120)
        for s in (-1, 1):
            x0, y0 = s * 0.15, nose_y + 0.02
            x1, y1 = s * (mw + 0.06), mouth_y - curve + 0.04
            mid = (s * (mw + 0.10), 0.5 * (y0 + y1))
            da.line([P(x0, y0), P(*mid), P(x1, y1)], fill=_scale(skin, 0.7, a), width=W(0.014), joint="curve")

    # --- pose, downsampling, lighting, noise, blur --------------------------------------------------------------
    img = img.reduce(k)  # antialiased downsampling, then the in-plane rotation at the final resolution
    img = img.rotate(angle, resample=Image.BILINEAR, center=(cx / k, cy / k), fillcolor=bg)
    a = np.asarray(img, dtype=np.float32)
    yy, xx = _unit_grid(size)
    light = 1.0 + grad_strength * (xx * math.cos(grad_theta) + yy * math.sin(grad_theta))
    a = a * light[..., None] * white_bal[None, None, :].astype(np.float32)
    a = (a - 128.0) * contrast + 128.0 + brightness
    a = _gaussian_blur(a + noise_sigma * noise, blur)
    return Image.fromarray(np.clip(a + 0.5, 0, 255).astype(np.uint8), "RGB")


# ---------------------------------------------------------------------------------------------------------------
# Reproducible streams of faces (shared by every layout writer)
# ---------------------------------------------------------------------------------------------------------------


def _stream_key(stream: str) -> int:
    return zlib.crc32(stream.encode("utf-8"))


def face_rng(seed: int, stream: str, index: int) -> np.random.Generator:
    """The generator for image ``index`` of ``stream`` (e.g. ``"rafdb/train"``) under ``seed``."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), _stream_key(stream), int(index)]))


def iter_faces(labels: Iterable[int], seed: int = 0, stream: str = "faces",
               size: int = 100) -> Iterator[Tuple[int, int, Image.Image]]:
    """Yield ``(index, canonical_label, image)`` for each canonical label; index is the 0-based list position.

    Image ``index`` depends only on ``(seed, stream, index, label, size)``, so any subset can be regenerated alone.
    """
    for i, lab in enumerate(labels):
        yield i, int(lab), render_face(int(lab), face_rng(seed, stream, i), size)


# ---------------------------------------------------------------------------------------------------------------
# Class counts
# ---------------------------------------------------------------------------------------------------------------


def largest_remainder(total: int, weights: Sequence[float]) -> List[int]:
    """Integers proportional to ``weights`` summing exactly to ``total`` (Hamilton / largest-remainder method).

    Each entry gets ``floor(total * w / sum(w))``; the leftover units go to the largest fractional parts (ties:
    larger weight first, then earlier position). Exact integer arithmetic for integer weights. The result never
    reverses the order of two weights (a larger weight never gets a smaller count), though near-equal weights can
    tie at small totals.
    """
    if total < 0:
        raise ValueError("total must be >= 0")
    ws = list(weights)
    if not ws or any(w < 0 for w in ws) or sum(ws) <= 0:
        raise ValueError("weights must be non-negative with a positive sum")
    den = sum(ws)
    if all(isinstance(w, (int, np.integer)) for w in ws):
        num = [total * int(w) for w in ws]
        base = [q // den for q in num]
        rem_key = [q % den for q in num]  # remainders over a common denominator: exact comparison
    else:
        num = [total * w / den for w in ws]
        base = [int(math.floor(q)) for q in num]
        rem_key = [q - b for q, b in zip(num, base)]
    left = total - sum(base)
    order = sorted(range(len(ws)), key=lambda i: (-rem_key[i], -ws[i], i))
    for i in order[:left]:
        base[i] += 1
    return base


def _split_counts(total: int, reference: Dict[int, int]) -> Dict[int, int]:
    codes = sorted(reference)
    counts = dict(zip(codes, largest_remainder(total, [reference[c] for c in codes])))
    # A class with no images breaks class-conditional samplers; when there is room, give every class one image,
    # taken from the currently largest class (which keeps the frequency order).
    if total >= len(codes):
        for c in sorted(codes, key=lambda c: -reference[c]):
            if counts[c] == 0:
                big = max(codes, key=lambda d: (counts[d], reference[d]))
                counts[big] -= 1
                counts[c] = 1
    return counts


def rafdb_class_counts(num_train: int, num_test: int) -> Tuple[Dict[int, int], Dict[int, int]]:
    """Images per RAF code (1..7) for each split: RAF-DB's class proportions scaled by :func:`largest_remainder`.

    When a split has at least 7 images every class gets at least one (taken from the largest class).
    """
    return _split_counts(num_train, RAFDB_TRAIN_COUNTS), _split_counts(num_test, RAFDB_TEST_COUNTS)


# ---------------------------------------------------------------------------------------------------------------
# Atomic directory writing
# ---------------------------------------------------------------------------------------------------------------


def _is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def read_marker(path) -> Optional[dict]:
    """The synthetic-dataset marker of directory ``path``, or None if there is none (or it is unreadable)."""
    try:
        with open(Path(path) / MARKER_NAME, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("generator") == GENERATOR else None


def _check_int(name, value, lo):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        raise UserError(f"synthetic dataset: {name} must be an integer >= {lo}, got {value!r}")
    return int(value)


PARTIAL_PREFIX = ".synthetic-partial-"


class _AtomicDir:
    """Build a dataset in a hidden temporary directory and move it into ``target`` only once it is complete.

    * ``target`` missing: the data is built in a sibling ``.<name>.synthetic-partial-*`` and moved with one rename,
      so ``target`` never exists half-written.
    * ``target`` an existing empty directory (or, with ``overwrite``, a synthetic dataset): renaming onto it would
      fail for a mount point (a container volume) and would strand a process whose working directory it is, so the
      data is built in ``target/.synthetic-partial-*`` and its top-level entries are renamed in, the marker last.
      Until the marker appears the directory does not count as a dataset (``overwrite`` removes the old marker
      first), so an interruption can never leave something that passes for a complete dataset.
    """

    def __init__(self, target, overwrite: bool):
        self.target, self.overwrite = Path(os.path.abspath(target)), overwrite

    def __enter__(self) -> Path:
        t = self.target
        if t.exists() and not t.is_dir():
            raise UserError(f"synthetic dataset: {t} exists and is not a directory")
        self.in_place = t.is_dir()
        if self.in_place:
            if not _is_empty_dir(t) and not (self.overwrite and read_marker(t) is not None):
                raise UserError(f"synthetic dataset: {t} already exists and is not empty "
                                "(only an existing synthetic dataset can be overwritten)")
            self.tmp = Path(tempfile.mkdtemp(prefix=PARTIAL_PREFIX, dir=t))
        else:
            t.parent.mkdir(parents=True, exist_ok=True)
            self.tmp = Path(tempfile.mkdtemp(prefix=f".{t.name}{PARTIAL_PREFIX}", dir=t.parent))
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        tmp, t = self.tmp, self.target
        try:
            if exc_type is not None:
                return False
            if not self.in_place:
                os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it 0700
                try:
                    os.rename(tmp, t)
                except OSError as err:
                    if read_marker(t) is not None:  # a concurrent writer got there first with its own copy
                        return False
                    raise UserError(f"synthetic dataset: could not move the generated data to {t}: {err}") from err
                return False
            entries = sorted(p.name for p in tmp.iterdir() if p.name != MARKER_NAME)
            if self.overwrite:
                (t / MARKER_NAME).unlink(missing_ok=True)  # from here on the old data no longer counts as complete
            for name in entries:
                dst = t / name
                if os.path.lexists(dst):
                    if not self.overwrite:
                        if read_marker(t) is not None:
                            return False
                        raise UserError(f"synthetic dataset: {dst} appeared while the dataset was being written")
                    os.rename(dst, tmp / f".old-{name}")  # removed with tmp below
                os.rename(tmp / name, dst)
            os.rename(tmp / MARKER_NAME, t / MARKER_NAME)
            return False
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _write_marker(root: Path, layout: str, args: dict, counts: dict, **extra) -> Path:
    """Write the marker (sorted keys, no timestamps, so it is byte-identical for equal arguments)."""
    info = {"generator": GENERATOR, "version": VERSION, "layout": layout, "args": args, "counts": counts, **extra}
    path = root / MARKER_NAME
    path.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def _shuffled_labels(counts: Dict[int, int], seed: int, stream: str) -> List[int]:
    labels = [c for c in sorted(counts) for _ in range(counts[c])]
    perm = face_rng(seed, stream + "/labels", 0).permutation(len(labels))
    return [labels[i] for i in perm]


# ---------------------------------------------------------------------------------------------------------------
# RAF-DB
# ---------------------------------------------------------------------------------------------------------------


def write_rafdb(out_dir, num_train: int = 2400, num_test: int = 600, size: int = 100, seed: int = 0, *,
                overwrite: bool = False) -> dict:
    """Write a synthetic RAF-DB (basic) dataset in the official layout under ``out_dir``.

    Creates ``basic/EmoLabel/list_patition_label.txt`` (``train_00001.jpg 5`` ..., then ``test_0001.jpg 7`` ...,
    labels are RAF codes 1..7) and ``basic/Image/aligned/<name>_aligned.jpg`` (``size`` x ``size`` JPEGs), then the
    marker ``SYNTHETIC_FER.json``. Class proportions follow RAF-DB (:func:`rafdb_class_counts`); the file order of
    classes is a seeded shuffle. ``out_dir`` must not exist or be empty (or, with ``overwrite``, hold a synthetic
    dataset). Returns ``{"root", "label_file", "image_dir", "marker", "counts": {"train": {code: n}, "test": ...}}``.
    """
    num_train = _check_int("num_train", num_train, 0)
    num_test = _check_int("num_test", num_test, 0)
    size = _check_int("size", size, 16)
    seed = _check_int("seed", seed, 0)
    if num_train > 99999 or num_test > 9999:
        raise UserError("synthetic dataset: RAF-DB names allow at most 99999 train and 9999 test images")
    out = Path(out_dir)
    train_counts, test_counts = rafdb_class_counts(num_train, num_test)
    splits = (("train", 5, train_counts), ("test", 4, test_counts))
    lines = []
    with _AtomicDir(out, overwrite) as tmp:
        label_dir, image_dir = tmp / "basic" / "EmoLabel", tmp / "basic" / "Image" / "aligned"
        label_dir.mkdir(parents=True)
        image_dir.mkdir(parents=True)
        for split, digits, counts in splits:
            stream = f"rafdb/{split}"
            codes = _shuffled_labels(counts, seed, stream)
            canon = [RAFDB_TO_CANONICAL[c] for c in codes]
            for i, _, img in iter_faces(canon, seed=seed, stream=stream, size=size):
                name = f"{split}_{i + 1:0{digits}d}"
                img.save(image_dir / f"{name}_aligned.jpg", "JPEG", quality=JPEG_QUALITY)
                lines.append(f"{name}.jpg {codes[i]}")
        (label_dir / "list_patition_label.txt").write_text("\n".join(lines) + ("\n" if lines else ""),
                                                            encoding="utf-8")
        counts_json = {s: {str(c): n for c, n in cnt.items()} for s, _, cnt in splits}
        args = {"num_train": num_train, "num_test": num_test, "size": size, "seed": seed}
        _write_marker(tmp, "rafdb-basic", args, counts_json,
                      class_names={str(c): RAFDB_NAMES[c] for c in sorted(RAFDB_NAMES)})
    return {
        "root": str(out),
        "label_file": str(out / "basic" / "EmoLabel" / "list_patition_label.txt"),
        "image_dir": str(out / "basic" / "Image" / "aligned"),
        "marker": str(out / MARKER_NAME),
        "counts": {"train": dict(train_counts), "test": dict(test_counts)},
    }


def ensure_demo_rafdb(data_dir, **kwargs) -> bool:
    """Create the synthetic RAF-DB demo in ``data_dir`` if it is missing or empty; True if it was written.

    A directory that already holds a synthetic dataset (marker present) is left alone, and so is any other
    non-empty path: the real loader then reports what is wrong with it. ``kwargs`` go to :func:`write_rafdb`.
    """
    path = Path(data_dir)
    if path.exists() and not _is_empty_dir(path):
        return False
    write_rafdb(path, **kwargs)
    return True
