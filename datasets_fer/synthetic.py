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
from remop_usb.fileio import current_umask

from . import affectnet, rafdb
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


#: The facial-action parameters' ranges over the canonical expressions and the neutral face: ``{name: (lo, hi)}``
#: with ``lo <= 0 <= hi`` (the full-intensity offsets). Action pretraining draws random combinations within them.
ACTION_RANGES: Dict[str, Tuple[float, float]] = {
    k: (min(0.0, *(d.get(k, 0.0) for d in _EXPRESSION_DELTAS.values())),
        max(0.0, *(d.get(k, 0.0) for d in _EXPRESSION_DELTAS.values())))
    for k in _PARAMS}


def check_actions(actions) -> Dict[str, float]:
    """``actions`` as ``{parameter: float}``; a name outside :data:`_PARAMS` or a non-finite value is an error."""
    unknown = sorted(set(actions) - set(_PARAMS))
    if unknown:
        raise ValueError(f"actions: unknown facial-action parameters {unknown}; known: {', '.join(_PARAMS)}")
    out = {k: float(v) for k, v in actions.items()}
    if not all(math.isfinite(v) for v in out.values()):
        raise ValueError(f"actions: values must be finite, not {actions!r}")
    return out


def _expression_params(expression: int, intensity: float, rng: np.random.Generator,
                       actions: Optional[Dict[str, float]] = None) -> Dict[str, float]:
    """Neutral + intensity * expression offsets + a per-person 'resting face' jitter.

    ``actions`` (checked by :func:`check_actions`) replaces ``intensity * offsets`` by its own offsets (missing
    parameters 0); the jitter is drawn the same way, so ``rng`` advances identically either way.
    """
    if actions is None:
        d = _EXPRESSION_DELTAS[expression]
        p = {k: intensity * d.get(k, 0.0) for k in _PARAMS}
    else:
        p = {k: actions.get(k, 0.0) for k in _PARAMS}
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
                intensity: Optional[float] = None, identity: Optional[np.random.Generator] = None,
                actions: Optional[Dict[str, float]] = None) -> Image.Image:
    """Draw a ``size`` x ``size`` RGB face showing canonical ``expression`` (0..7, see ``labels.CANONICAL``).

    Everything random comes from ``rng``, consumed in a fixed order, so equal generator states give equal images.
    ``intensity`` (0..1) fixes the expression strength; by default it is drawn per sample (some faces are weak).
    ``identity``, when given, supplies the person's own traits instead (face shape, skin, hair, eyes, brows, mouth):
    generators in equal states give the same person, under the pose, lighting and expression ``rng`` draws. Without
    it every face is a new person, and the image is the same as before this option existed.
    ``actions``, when given, is a ``{parameter: offset}`` dict over :data:`_PARAMS` (missing ones 0) that replaces
    the expression's offsets: a face making an arbitrary combination of facial actions (action-unit pretraining), the
    per-person resting-face jitter still added. ``expression`` is then only validated and ``intensity`` is ignored;
    ``rng`` is consumed in the same order, so the pose, lighting and (without ``identity``) person are those of the
    same generator state without ``actions``.
    """
    if not (isinstance(expression, (int, np.integer)) and 0 <= int(expression) < len(CANONICAL)):
        raise ValueError(f"expression must be a canonical index 0..{len(CANONICAL) - 1}, not {expression!r}")
    if not (isinstance(size, (int, np.integer)) and size >= 16):
        raise ValueError(f"size must be an integer >= 16, not {size!r}")
    expression, size = int(expression), int(size)
    actions = None if actions is None else check_actions(actions)
    idr = rng if identity is None else identity  # the person's traits

    # --- draws, in a fixed order -----------------------------------------------------------------------------
    drawn = float(np.clip(rng.beta(2.5, 1.2), 0.12, 1.0))  # always drawn, so `intensity` keeps the same identity
    intensity = drawn if intensity is None else intensity
    p = _expression_params(expression, float(intensity), rng, actions)

    k = 2 if size >= 64 else int(math.ceil(128 / size))  # supersampling factor
    R = size * k
    scale = rng.uniform(1.0, 1.25)  # aligned crops: the face fills the frame, as after MTCNN alignment
    fh = 0.45 * R * scale * idr.uniform(0.94, 1.06)  # face half-height
    fw = fh * idr.uniform(0.70, 0.84)  # face half-width
    cx = R * (0.5 + rng.uniform(-0.05, 0.05))
    cy = R * (0.52 + rng.uniform(-0.04, 0.04))
    angle = rng.uniform(-15.0, 15.0)
    yaw = rng.uniform(-1.0, 1.0)

    skin = _mix((242, 208, 182), (92, 58, 40), idr.uniform(0.0, 1.0))
    skin = tuple(int(np.clip(c + idr.normal(0, 6), 0, 255)) for c in skin)
    bg = tuple(int(v) for v in rng.integers(30, 230, size=3))
    hair_col = [(25, 20, 18), (70, 45, 25), (120, 80, 40), (200, 170, 110), (150, 150, 150)][int(idr.integers(0, 5))]
    hair_style = int(idr.integers(0, 4))  # 0 none, 1 short, 2 long, 3 short with side part
    hairline = idr.uniform(-0.08, 0.04)
    brow_col = _mix(hair_col, (20, 15, 12), 0.5)
    iris_col = tuple(int(v) for v in idr.integers(20, 110, size=3))
    eye_sep = idr.uniform(0.31, 0.40)
    eye_y = -0.12 + idr.uniform(-0.03, 0.03)
    brow_w = idr.uniform(0.045, 0.08)
    mouth_y = 0.50 + idr.uniform(-0.03, 0.03)
    mouth_w0 = idr.uniform(0.26, 0.32)
    lip_w = idr.uniform(0.03, 0.05)
    asym_side = 1.0 if idr.random() < 0.5 else -1.0
    snarl_side = 1.0 if idr.random() < 0.5 else -1.0

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
                os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes it 0700
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


#: RAF-DB layouts :func:`write_rafdb` can write (the three :mod:`datasets_fer.rafdb` reads)
RAFDB_LAYOUTS = rafdb.LAYOUTS


def _rafdb_entry(layout: str, split: str, name: str, code: int) -> Tuple[str, str]:
    """(image path relative to the root, label-file line or '') of image ``name`` with RAF code ``code``."""
    if layout == "official":
        return f"{rafdb.ALIGNED_DIR}/{name}{rafdb.ALIGNED_SUFFIX}.jpg", f"{name}.jpg {code}"
    if layout == "label-file":
        return f"{split}/{name}_aligned.jpg", f"{name}_aligned.jpg {code - 1}"  # 0-based RAF order
    return f"{split}/{code}/{name}_aligned.jpg", ""


def _rafdb_label_files(layout: str, lines: Dict[str, List[str]]) -> Dict[str, List[str]]:
    """Label file (relative path) -> its lines, for ``layout``; class folders need none."""
    if layout == "official":
        return {rafdb.LABEL_FILE: lines["train"] + lines["test"]}
    if layout == "label-file":
        return {rafdb.SPLIT_LABEL_FILE.format(split=split): lines[split] for split in ("train", "test")}
    return {}


def write_rafdb(out_dir, num_train: int = 2400, num_test: int = 600, size: int = 100, seed: int = 0, *,
                layout: str = "official", overwrite: bool = False) -> dict:
    """Write a synthetic RAF-DB (basic) dataset in one of :data:`RAFDB_LAYOUTS` under ``out_dir``.

    ``official``: ``basic/EmoLabel/list_patition_label.txt`` (``train_00001.jpg 5`` ..., then ``test_0001.jpg 7``
    ..., labels are RAF codes 1..7) and ``basic/Image/aligned/<name>_aligned.jpg``. ``label-file``:
    ``RAF_train_label2.txt`` / ``RAF_test_label2.txt`` (``train_00001_aligned.jpg 4``, 0-based RAF codes) beside
    ``train/`` and ``test/``. ``class-folders``: ``{train,test}/<RAF code 1-7>/<name>_aligned.jpg``. Every layout
    holds the same ``size`` x ``size`` JPEGs with the same labels, then the marker ``SYNTHETIC_FER.json``. Class
    proportions follow RAF-DB (:func:`rafdb_class_counts`); the file order of classes is a seeded shuffle.
    ``out_dir`` must not exist or be empty (or, with ``overwrite``, hold a synthetic dataset). Returns ``{"root",
    "layout", "label_file", "image_dir", "marker", "counts": {"train": {code: n}, "test": ...}}`` (class folders:
    ``label_file`` and ``image_dir`` are the ``train`` folder; label-file: ``label_file`` is the train file).
    """
    num_train = _check_int("num_train", num_train, 0)
    num_test = _check_int("num_test", num_test, 0)
    size = _check_int("size", size, 16)
    seed = _check_int("seed", seed, 0)
    layout = _check_choice("RAF-DB layout", layout, RAFDB_LAYOUTS)
    if num_train > 99999 or num_test > 9999:
        raise UserError("synthetic dataset: RAF-DB names allow at most 99999 train and 9999 test images")
    out = Path(out_dir)
    train_counts, test_counts = rafdb_class_counts(num_train, num_test)
    splits = (("train", 5, train_counts), ("test", 4, test_counts))
    lines: Dict[str, List[str]] = {"train": [], "test": []}
    with _AtomicDir(out, overwrite) as tmp:
        for split, digits, counts in splits:
            stream = f"rafdb/{split}"
            codes = _shuffled_labels(counts, seed, stream)
            canon = [RAFDB_TO_CANONICAL[c] for c in codes]
            for i, _, img in iter_faces(canon, seed=seed, stream=stream, size=size):
                rel, line = _rafdb_entry(layout, split, f"{split}_{i + 1:0{digits}d}", codes[i])
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                img.save(tmp / rel, "JPEG", quality=JPEG_QUALITY)
                lines[split].append(line)
        for folder in ([rafdb.ALIGNED_DIR] if layout == "official" else ["train", "test"]):
            (tmp / folder).mkdir(parents=True, exist_ok=True)  # an empty split still has its folder
        for rel, rows in _rafdb_label_files(layout, lines).items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_text("\n".join(rows) + ("\n" if rows else ""), encoding="utf-8")
        counts_json = {s: {str(c): n for c, n in cnt.items()} for s, _, cnt in splits}
        args = {"num_train": num_train, "num_test": num_test, "size": size, "seed": seed}
        if layout != "official":
            args["layout"] = layout
        _write_marker(tmp, "rafdb-basic" if layout == "official" else f"rafdb-{layout}", args, counts_json,
                      class_names={str(c): RAFDB_NAMES[c] for c in sorted(RAFDB_NAMES)})
    label_file, image_dir = {
        "official": (rafdb.LABEL_FILE, rafdb.ALIGNED_DIR),
        "label-file": (rafdb.SPLIT_LABEL_FILE.format(split="train"), "train"),
        "class-folders": ("train", "train"),
    }[layout]
    return {
        "root": str(out),
        "layout": layout,
        "label_file": str(out / label_file),
        "image_dir": str(out / image_dir),
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


# ---------------------------------------------------------------------------------------------------------------
# CK+
# ---------------------------------------------------------------------------------------------------------------

#: CK+ labeled sequences per emotion code (1 anger, 2 contempt, 3 disgust, 4 fear, 5 happy, 6 sadness, 7 surprise):
#: 327 in all; the 636-image protocol drops the 18 contempt expression frames
CKPLUS_SEQUENCE_COUNTS = {1: 45, 2: 18, 3: 59, 4: 25, 5: 69, 6: 28, 7: 83}
#: sequences of the real CK+ without an emotion file (593 - 327)
CKPLUS_UNLABELED = 266


def _ckplus_sequences(num_labeled: int, num_unlabeled: int, frames: Tuple[int, int], seed: int, *,
                      counts: Optional[Dict[int, int]] = None) -> List[dict]:
    """The sequences to draw: subject, sequence number, frame count and CK+ code (None: no emotion file).

    Codes follow :data:`CKPLUS_SEQUENCE_COUNTS` (:func:`_split_counts`, so every code, contempt included, gets a
    sequence once ``num_labeled >= 7``); unlabeled sequences show a random expression. Subjects hold 1-6 sequences.
    ``counts``: those per-code counts when the caller has them already.
    """
    if counts is None:
        counts = _split_counts(num_labeled, CKPLUS_SEQUENCE_COUNTS)
    codes: List[Optional[int]] = [c for c in sorted(counts) for _ in range(counts[c])] + [None] * num_unlabeled
    rng = face_rng(seed, "ckplus/sequences", 0)
    codes = [codes[i] for i in rng.permutation(len(codes))]
    out, subject, seq, left = [], 0, 0, 0
    for code in codes:
        if left == 0:  # a new subject (numbers from S005 up, with gaps, as in CK+)
            step = int(rng.integers(1, 6)) + (4 if subject == 0 else 0)
            subject, seq, left = subject + step, 0, int(rng.integers(1, 7))
        seq += int(rng.integers(1, 3))
        left -= 1
        shown = code if code is not None else int(rng.integers(1, 8))
        out.append({"subject": f"S{subject:03d}", "seq": f"{seq:03d}", "code": code, "shown": shown,
                    "frames": int(rng.integers(frames[0], frames[1] + 1)), "peak": float(rng.uniform(0.7, 1.0))})
    return out


def _ckplus_protocol_counts(counts: Dict[int, int]) -> Dict[str, int]:
    """Images per canonical class the 636-image protocol selects from labeled sequences ``counts`` (per code)."""
    from .labels import CKPLUS_TO_CANONICAL

    out = {name: 0 for name in CANONICAL[:7]}
    out["neutral"] += sum(counts.values())  # every labeled sequence's first frame
    for code, n in counts.items():
        if code != 2:  # contempt's expression frame is excluded
            out[CANONICAL[CKPLUS_TO_CANONICAL[code]]] += n
    return out


def write_ckplus(out_dir, num_labeled: int = 327, num_unlabeled: int = CKPLUS_UNLABELED, size: int = 100,
                 seed: int = 0, *, frames: Tuple[int, int] = (3, 6), overwrite: bool = False) -> dict:
    """Write a synthetic CK+ in its distributed layout under ``out_dir`` (see :mod:`datasets_fer.ckplus`).

    ``num_labeled`` sequences get an emotion file (codes 1-7 in CK+'s proportions, contempt included) and
    ``num_unlabeled`` do not. A sequence has ``frames[0]..frames[1]`` grey ``size`` x ``size`` PNG frames
    ``cohn-kanade-images/Sxxx/yyy/Sxxx_yyy_0000000k.png`` (k = 1..n) of one person whose expression grows from
    neutral (frame 1) to its peak (frame n); a labeled sequence's ``Emotion/Sxxx/yyy/Sxxx_yyy_0000000n_emotion.txt``
    holds its code as CK+ writes it (``   3.0000000e+00``). With the defaults the sequence counts are CK+'s own
    (327 labeled, 266 not), so the 636-image protocol selects exactly CK+'s 636 images per class. Deterministic
    and atomic like :func:`write_rafdb`. Returns ``{"root", "image_dir", "emotion_dir", "marker", "counts":
    {"sequences": {code: n}, "unlabeled": n, "protocol": {canonical name: images}}}``.
    """
    num_labeled = _check_int("num_labeled", num_labeled, 0)
    num_unlabeled = _check_int("num_unlabeled", num_unlabeled, 0)
    size = _check_int("size", size, 16)
    seed = _check_int("seed", seed, 0)
    lo, hi = (_check_int("frames", f, 2) for f in frames)
    if hi < lo:
        raise UserError(f"synthetic dataset: frames must be (min, max) with min <= max, got {frames!r}")
    from .labels import CKPLUS_TO_CANONICAL

    counts = _split_counts(num_labeled, CKPLUS_SEQUENCE_COUNTS)
    protocol = _ckplus_protocol_counts(counts)
    sequences = _ckplus_sequences(num_labeled, num_unlabeled, (lo, hi), seed, counts=counts)
    out = Path(out_dir)
    with _AtomicDir(out, overwrite) as tmp:
        (tmp / "cohn-kanade-images").mkdir()
        (tmp / "Emotion").mkdir()
        for i, s in enumerate(sequences):
            folder = tmp / "cohn-kanade-images" / s["subject"] / s["seq"]
            folder.mkdir(parents=True)
            stem = f"{s['subject']}_{s['seq']}"
            for k in range(s["frames"]):  # one identity per sequence: the same generator state for every frame
                level = s["peak"] * k / (s["frames"] - 1)
                img = render_face(CKPLUS_TO_CANONICAL[s["shown"]], face_rng(seed, "ckplus/faces", i), size,
                                  intensity=level)
                img.convert("L").save(folder / f"{stem}_{k + 1:08d}.png", "PNG")
            if s["code"] is not None:
                emotion = tmp / "Emotion" / s["subject"] / s["seq"]
                emotion.mkdir(parents=True)
                (emotion / f"{stem}_{s['frames']:08d}_emotion.txt").write_text(f"   {float(s['code']):.7e}\n",
                                                                              encoding="utf-8")
        info = {"sequences": {str(c): n for c, n in counts.items()}, "unlabeled": num_unlabeled,
                "protocol": dict(protocol)}
        args = {"num_labeled": num_labeled, "num_unlabeled": num_unlabeled, "size": size, "seed": seed,
                "frames": [lo, hi]}
        _write_marker(tmp, "ckplus", args, info)
    return {"root": str(out), "image_dir": str(out / "cohn-kanade-images"), "emotion_dir": str(out / "Emotion"),
            "marker": str(out / MARKER_NAME),
            "counts": {"sequences": dict(counts), "unlabeled": num_unlabeled, "protocol": protocol}}


# ---------------------------------------------------------------------------------------------------------------
# Shared by the FERPlus and AffectNet writers
# ---------------------------------------------------------------------------------------------------------------


def _noise_image(seed: int, stream: str, index: int, size: int, mode: str = "RGB") -> Image.Image:
    """A not-a-face picture (uniform noise) for rows labelled not-a-face / No-Face."""
    shape = (size, size, 3) if mode == "RGB" else (size, size)
    return Image.fromarray(face_rng(seed, stream + "/noise", index).integers(0, 256, shape, dtype=np.uint8), mode)


def _check_choice(name: str, value, choices: Sequence[str]) -> str:
    if value not in choices:
        raise UserError(f"synthetic dataset: {name} must be one of {', '.join(choices)}, not {value!r}")
    return value


# ---------------------------------------------------------------------------------------------------------------
# FERPlus
# ---------------------------------------------------------------------------------------------------------------

#: FERPlus majority-vote training images per vote column (0 neutral, 1 happiness, 2 surprise, 3 sadness, 4 anger,
#: 5 disgust, 6 fear, 7 contempt); the writer uses these proportions for every split.
FERPLUS_TRAIN_COUNTS = {0: 8740, 1: 7287, 2: 3149, 3: 3014, 4: 2100, 5: 119, 6: 532, 7: 119}
FERPLUS_LAYOUTS = ("csv", "folders")
#: Rows added to every split besides the kept images, each with votes (neutral ... contempt, unknown, NF) that the
#: majority vote must reject; the empty-name row has a clear majority but no image name, so it is skipped.
FERPLUS_EXTRA_ROWS = (
    ("tie", (4, 4, 0, 0, 0, 0, 0, 0, 2, 0)),         # neutral 4 = happiness 4: no strict majority
    ("no-majority", (3, 0, 3, 2, 2, 0, 0, 0, 0, 0)),  # best 3 of 10
    ("all-single", (1, 1, 1, 1, 1, 1, 1, 1, 1, 1)),   # every vote an outlier: nothing left
    ("unknown", (2, 0, 0, 0, 0, 0, 0, 0, 6, 2)),      # unknown wins 6 of 10
    ("not-a-face", (0, 0, 0, 0, 0, 1, 0, 0, 0, 9)),   # NF wins 9 of 9 (the single vote is an outlier)
    ("empty-name", (0, 10, 0, 0, 0, 0, 0, 0, 0, 0)),  # skipped: no Image name
)
_FERPLUS_USAGE = (("train", "Training", "FER2013Train"), ("valid", "PublicTest", "FER2013Valid"),
                  ("test", "PrivateTest", "FER2013Test"))


def _ferplus_kept_votes(column: int, i: int, rng: np.random.Generator) -> Tuple[int, ...]:
    """Ten votes that ``column`` wins by Microsoft's majority rule, in one of three patterns (by ``i % 3``).

    0: ``column`` 7-10, the rest single votes; 1: ``column`` 5 and five single votes, a majority only once the
    single votes are removed as outliers; 2: ``column`` 6, a runner-up 2 and two single votes (6 of 8).
    """
    others = [int(c) for c in rng.permutation([c for c in range(10) if c != column])]
    votes = [0] * 10
    pattern = i % 3
    votes[column] = (int(rng.integers(7, 11)), 5, 6)[pattern]
    singles = 10 - votes[column] if pattern != 2 else 2
    if pattern == 2:
        votes[others.pop()] = 2
    for c in others[:singles]:
        votes[c] = 1
    return tuple(votes)


def _ferplus_rows(counts: Dict[int, int], seed: int, split: str) -> List[Tuple[str, Tuple[int, ...]]]:
    """(kind, votes) for one split, in file order: the kept images (kind 'kept') and the extra rows, shuffled."""
    stream = f"ferplus/{split}"
    columns = _shuffled_labels(counts, seed, stream)
    rng = face_rng(seed, stream + "/votes", 0)
    rows = [("kept", _ferplus_kept_votes(c, i, rng)) for i, c in enumerate(columns)] + list(FERPLUS_EXTRA_ROWS)
    return [rows[i] for i in face_rng(seed, stream + "/rows", 0).permutation(len(rows))]


def _ferplus_image(votes: Sequence[int], seed: int, stream: str, i: int, size: int) -> Image.Image:
    """The grey face of row ``i``: the top-voted emotion's expression, or noise when NF has most votes."""
    from .labels import FERPLUS_TO_CANONICAL

    if votes[9] > max(votes[:8]):
        return _noise_image(seed, stream, i, size, "L")
    column = max(range(8), key=lambda c: votes[c])
    return render_face(FERPLUS_TO_CANONICAL[column], face_rng(seed, stream, i), size).convert("L")


def _ferplus_emotion(votes: Sequence[int]) -> int:
    """A FER2013 ``emotion`` code for fer2013.csv (the reader ignores it): the top emotion's, contempt -> 6."""
    from .labels import FER2013_TO_CANONICAL, FERPLUS_TO_CANONICAL

    fer2013 = {canon: code for code, canon in FER2013_TO_CANONICAL.items()}
    return fer2013.get(FERPLUS_TO_CANONICAL[max(range(8), key=lambda c: votes[c])], 6)


def write_ferplus(out_dir, num_train: int = 400, num_valid: int = 60, num_test: int = 60, size: int = 48,
                  seed: int = 0, layout: str = "csv", *, overwrite: bool = False) -> dict:
    """Write a synthetic FERPlus in one of :data:`FERPLUS_LAYOUTS` under ``out_dir`` (:mod:`datasets_fer.ferplus`).

    ``num_train`` / ``num_valid`` / ``num_test`` are the images the majority vote keeps, per vote column in the
    proportions of :data:`FERPLUS_TRAIN_COUNTS` (every column gets one once a split has 8); their votes mix clean
    majorities, majorities that exist only after the single-vote outliers are removed, and runner-ups. Every split
    also gets the rows of :data:`FERPLUS_EXTRA_ROWS` (a tie, no majority, all single votes, unknown and NF majorities,
    an empty image name), shuffled in. ``csv``: ``fer2013.csv`` (emotion,pixels,Usage; 48x48 grey, so ``size`` must
    be 48) and ``fer2013new.csv``, rows Training, then PublicTest, then PrivateTest, named ``fer<row:07d>.png``.
    ``folders``: ``FER2013Train|Valid|Test/`` with ``size`` x ``size`` grey PNGs and a header-less ``label.csv``
    (the empty-name row left out, as Microsoft's generator does). Deterministic and atomic like :func:`write_rafdb`.
    Returns ``{"root", "layout", "marker", "counts": {split: {column: kept images}}, "rows": {split: rows written}}``.
    """
    from .ferplus import VOTE_COLUMNS

    nums = {"train": _check_int("num_train", num_train, 0), "valid": _check_int("num_valid", num_valid, 0),
            "test": _check_int("num_test", num_test, 0)}
    size, seed = _check_int("size", size, 16), _check_int("seed", seed, 0)
    layout = _check_choice("FERPlus layout", layout, FERPLUS_LAYOUTS)
    if layout == "csv" and size != 48:
        raise UserError(f"synthetic dataset: FERPlus csv layout stores 48x48 pixels, size must be 48, not {size}")
    counts = {split: _split_counts(n, FERPLUS_TRAIN_COUNTS) for split, n in nums.items()}
    out = Path(out_dir)
    fer, new, labels, rows_written, r = [], [], {}, {}, 0
    with _AtomicDir(out, overwrite) as tmp:
        for split, usage, folder in _FERPLUS_USAGE:
            stream, labels[folder] = f"ferplus/{split}", []
            if layout == "folders":
                (tmp / folder).mkdir()
            rows = _ferplus_rows(counts[split], seed, split)
            for i, (kind, votes) in enumerate(rows):
                name = "" if kind == "empty-name" else f"fer{r:07d}.png"
                img = _ferplus_image(votes, seed, stream, i, size)
                text = ",".join(str(v) for v in votes)
                if layout == "csv":
                    pixels = " ".join(map(str, np.asarray(img).ravel().tolist()))
                    fer.append(f"{_ferplus_emotion(votes)},{pixels},{usage}")
                    new.append(f"{usage},{name},{text}")
                elif name:
                    img.save(tmp / folder / name, "PNG")
                    labels[folder].append(f'{name},"(0, 0, {size}, {size})",{text}')
                r += 1
            rows_written[split] = len(rows) if layout == "csv" else len(rows) - 1
        files = {"fer2013.csv": ["emotion,pixels,Usage"] + fer,
                 "fer2013new.csv": ["Usage,Image name," + ",".join(VOTE_COLUMNS)] + new} \
            if layout == "csv" else {f"{folder}/label.csv": lines for folder, lines in labels.items()}
        for rel, lines in files.items():
            (tmp / rel).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        args = {"num_train": nums["train"], "num_valid": nums["valid"], "num_test": nums["test"], "size": size,
                "seed": seed, "layout": layout}
        counts_json = {s: {str(c): n for c, n in cnt.items()} for s, cnt in counts.items()}
        _write_marker(tmp, f"ferplus-{layout}", args, counts_json, rows=rows_written,
                      extra_rows=[kind for kind, _ in FERPLUS_EXTRA_ROWS])
    return {"root": str(out), "layout": layout, "marker": str(out / MARKER_NAME),
            "counts": {s: dict(c) for s, c in counts.items()}, "rows": rows_written}


# ---------------------------------------------------------------------------------------------------------------
# AffectNet
# ---------------------------------------------------------------------------------------------------------------

#: AffectNet manually annotated training images per expression code 0-7 (287,651 in all).
AFFECTNET_TRAIN_COUNTS = {0: 74874, 1: 134415, 2: 25459, 3: 14090, 4: 6378, 5: 3803, 6: 24882, 7: 3750}
#: validation: about 500 images per class
AFFECTNET_VAL_COUNTS = {c: 500 for c in range(8)}
AFFECTNET_LAYOUTS = ("csv", "npy")
#: codes every split also gets one row of (8 None, 9 Uncertain, 10 No-Face); readers drop them
AFFECTNET_DROPPED = affectnet.DROPPED_CODES


def _affectnet_image(code: int, seed: int, stream: str, i: int, size: int) -> Image.Image:
    """Row ``i``'s picture: the expression of codes 0-7, a face with a random expression for 8-9, noise for 10."""
    if code == 10:
        return _noise_image(seed, stream, i, size)
    shown = code if code < 8 else int(face_rng(seed, stream + "/shown", i).integers(0, 8))
    return render_face(shown, face_rng(seed, stream, i), size)


def _affectnet_annotations(code: int, seed: int, stream: str, i: int, size: int):
    """(valence, arousal, 68 landmarks as x0,y0,x1,...) of row ``i``; No-Face rows get valence = arousal = -2."""
    rng = face_rng(seed, stream + "/annotations", i)
    landmarks = np.round(rng.uniform(0, size, 136), 2)
    valence, arousal = (-2.0, -2.0) if code == 10 else (round(float(x), 6) for x in rng.uniform(-1, 1, 2))
    return valence, arousal, landmarks


def write_affectnet(out_dir, num_train: int = 400, num_val: int = 80, size: int = 64, seed: int = 0,
                    layout: str = "csv", *, overwrite: bool = False) -> dict:
    """Write a synthetic AffectNet in one of :data:`AFFECTNET_LAYOUTS` under ``out_dir`` (see datasets_fer.affectnet).

    ``num_train`` / ``num_val`` images carry codes 0-7 (training in :data:`AFFECTNET_TRAIN_COUNTS`' proportions,
    validation balanced); each split also gets one row of each code in :data:`AFFECTNET_DROPPED`, shuffled in.
    ``csv``: ``Manually_Annotated_file_lists/training.csv`` and ``validation.csv`` (the real header; face box
    ``0,0,size,size``, 68 landmarks, valence, arousal) and JPEGs ``Manually_Annotated_Images/<1-4>/<sha224>.jpg``.
    ``npy``: ``train_set`` / ``val_set`` with ``images/<n>.jpg`` and ``annotations/<n>_exp.npy`` (the code as a
    string, e.g. ``'3'``), ``_val.npy``, ``_aro.npy``, ``_lnd.npy``, ``n`` = 0, 1, ... in file order. Deterministic
    and atomic like :func:`write_rafdb`. Returns ``{"root", "layout", "marker", "counts": {"train"|"val": {code: n}}}``
    (codes 0-10).
    """
    import hashlib

    nums = {"train": _check_int("num_train", num_train, 0), "val": _check_int("num_val", num_val, 0)}
    size, seed = _check_int("size", size, 16), _check_int("seed", seed, 0)
    layout = _check_choice("AffectNet layout", layout, AFFECTNET_LAYOUTS)
    reference = {"train": AFFECTNET_TRAIN_COUNTS, "val": AFFECTNET_VAL_COUNTS}
    counts = {s: {**_split_counts(n, reference[s]), **{c: 1 for c in AFFECTNET_DROPPED}} for s, n in nums.items()}
    out = Path(out_dir)
    with _AtomicDir(out, overwrite) as tmp:
        for split, list_name, set_name in (("train", "training.csv", "train_set"),
                                           ("val", "validation.csv", "val_set")):
            stream = f"affectnet/{split}"
            lines = [",".join(affectnet.STANDARD_COLUMNS)]
            folder = tmp / set_name
            if layout == "npy":
                (folder / "images").mkdir(parents=True)
                (folder / "annotations").mkdir()
            for i, code in enumerate(_shuffled_labels(counts[split], seed, stream)):
                img = _affectnet_image(code, seed, stream, i, size)
                valence, arousal, landmarks = _affectnet_annotations(code, seed, stream, i, size)
                if layout == "csv":
                    rel = f"{1 + i % 4}/{hashlib.sha224(f'{seed}/{split}/{i}'.encode()).hexdigest()}.jpg"
                    (tmp / "Manually_Annotated_Images" / rel).parent.mkdir(parents=True, exist_ok=True)
                    img.save(tmp / "Manually_Annotated_Images" / rel, "JPEG", quality=JPEG_QUALITY)
                    marks = ";".join(f"{v:.2f}" for v in landmarks)
                    lines.append(f"{rel},0,0,{size},{size},{marks},{code},{valence},{arousal}")
                    continue
                img.save(folder / "images" / f"{i}.jpg", "JPEG", quality=JPEG_QUALITY)
                for suffix, value in (("exp", str(code)), ("val", str(valence)), ("aro", str(arousal)),
                                      ("lnd", landmarks)):
                    np.save(folder / "annotations" / f"{i}_{suffix}.npy", np.asarray(value))
            if layout == "csv":
                lists = tmp / "Manually_Annotated_file_lists"
                lists.mkdir(exist_ok=True)
                (lists / list_name).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        args = {"num_train": nums["train"], "num_val": nums["val"], "size": size, "seed": seed, "layout": layout}
        counts_json = {s: {str(c): n for c, n in cnt.items()} for s, cnt in counts.items()}
        _write_marker(tmp, f"affectnet-{layout}", args, counts_json,
                      class_names={str(c): n for c, n in affectnet.EXPRESSION_NAMES.items()})
    return {"root": str(out), "layout": layout, "marker": str(out / MARKER_NAME),
            "counts": {s: dict(c) for s, c in counts.items()}}
