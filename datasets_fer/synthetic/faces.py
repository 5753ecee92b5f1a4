"""The face renderer of the synthetic data: one procedurally drawn cartoon face per call, reproducibly.

* :func:`render_face` draws one face (an RGB ``PIL.Image``) showing a canonical expression (``labels.CANONICAL``),
  with random identity, pose, scale, lighting, noise and per-sample expression intensity. Fear/surprise and
  sad/neutral are deliberately confusable (shared cues, overlapping intensities); every class is still learnable.
  ``actions`` replaces the expression's offsets by facial actions within :data:`ACTION_RANGES` (the stand-in
  backbone's pretraining, :mod:`remop_usb.pretrain`).
* :func:`face_rng` is the generator of image ``i`` of a named stream, and :func:`iter_faces` renders a list of
  canonical labels with it: image ``i`` depends only on ``(seed, stream, i, label, size)``, never on global RNG
  state or on the other images. The layout writers (:mod:`.layouts`) only decide labels, names and file formats.
"""

from __future__ import annotations

import functools
import math
import zlib
from typing import Dict, Iterable, Iterator, Optional, Tuple

import numpy as np
from PIL import Image, ImageDraw

from ..labels import CANONICAL


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
