"""``remop-usb align``: detect and crop faces with facenet-pytorch's MTCNN (the paper aligns to 224 x 224 with MTCNN).

Every image under ``--src`` (recursively; .jpg .jpeg .png .bmp .webp .tif .tiff) is written to the same relative
path under ``--dst``, same file name and format, as a ``size`` x ``size`` RGB face crop:

* **Face.** :class:`facenet_pytorch.MTCNN` detects faces (its bundled P/R/O-net weights, thresholds 0.6/0.7/0.7,
  20-px minimum face); of several faces the largest box is kept. The crop is
  :func:`facenet_pytorch.extract_face` of that box: the box grown by ``margin`` pixels *of the output image*
  (``margin * box_side / (size - margin)`` source pixels in total per axis, half on each side), clipped to the
  image, and resized to ``size`` x ``size`` (bilinear; the box is not made square first, so a non-square box is
  slightly stretched). There is **no rotation**: the eye landmarks are not used, faces keep their in-plane tilt.
* **No face** (none detected, or an image under 20 px on a side, too small for MTCNN's pyramid): the
  *fallback* is a centre crop, the largest centred square resized to ``size`` x ``size``
  (:func:`PIL.ImageOps.fit`), listed in the report.
* **Unreadable** (not an image, truncated): nothing is written; the image is listed in the report and tried
  again by the next run.

Images are read with their EXIF orientation applied and converted to RGB. Detection runs in batches of up to
``--batch_size`` images *of the same size* (MTCNN batches only equal-size images; nothing is resized for it).

Resuming: an image whose output already exists in ``dst`` is skipped, so a stopped run continues where it was.
Each output is written to a temporary file in its folder (``.align-tmp-*``) and renamed, so a killed run leaves
no partial image (stale temporary files are removed by the next run). The report ``dst/align_report.json`` is
rewritten atomically after every batch, before that batch's images are written::

    {"size": 224, "margin": 0, "detector": ..., "fallback": ...,
     "no_face": [{"image": "a/b.jpg", "reason": "no face detected", "fallback": "center_crop"}, ...],
     "unreadable": [{"image": "c.jpg", "error": "..."}, ...]}

``no_face`` keeps the entries of earlier runs whose outputs are still there; a dst aligned with another size or
margin is refused. The last line printed is a summary: processed, skipped, no face, unreadable, time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field

from PIL import Image, ImageOps

from remop_usb.errors import OneLineArgumentParser, UserError
from remop_usb.fileio import atomic_output
from remop_usb.fileio import write_json_atomic

from . import folders

__all__ = ["main", "align_folder", "find_images", "detect_faces", "face_crop", "fallback_crop", "REPORT_NAME"]

#: the readers' image extensions (:data:`datasets_fer.folders.IMAGE_EXTENSIONS`) and other formats PIL reads
IMAGE_EXTENSIONS = folders.IMAGE_EXTENSIONS + (".webp", ".tif", ".tiff")
REPORT_NAME = "align_report.json"
TMP_PREFIX = ".align-tmp-"
MIN_FACE = 20  # MTCNN's min_face_size; smaller images have an empty detection pyramid
FALLBACK = "center_crop"
FALLBACK_DOC = "center_crop: the largest centred square of the image, resized to size x size (PIL.ImageOps.fit)"
DETECTOR_DOC = ("facenet_pytorch.MTCNN, largest face; crop = facenet_pytorch.extract_face(box, size, margin), "
                "no rotation")
_READ_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


# --------------------------------------------------------------------------------------------------- files


def find_images(src: str, dst: str) -> list:
    """Relative paths of the images under ``src``, sorted; ``dst`` (if inside ``src``) and temp files excluded."""
    skip = os.path.realpath(dst)
    found = []
    for folder, dirs, files in os.walk(src):
        dirs[:] = sorted(d for d in dirs if os.path.realpath(os.path.join(folder, d)) != skip)
        for name in files:
            if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(TMP_PREFIX):
                found.append(os.path.relpath(os.path.join(folder, name), src))
    return sorted(found)


def _remove_stale_temps(dst: str) -> None:
    for folder, _, files in os.walk(dst):
        for name in files:
            if name.startswith(TMP_PREFIX):
                os.unlink(os.path.join(folder, name))


def _read_rgb(path: str) -> Image.Image:
    with Image.open(path) as im:
        im.load()
        return ImageOps.exif_transpose(im).convert("RGB")


def save_atomic(img: Image.Image, path: str) -> None:
    """Save ``img`` to ``path`` in the format its extension names, through a temporary file and a rename."""
    folder, ext = os.path.dirname(path), os.path.splitext(path)[1].lower()
    os.makedirs(folder, exist_ok=True)
    fmt = Image.registered_extensions()[ext]
    options = {"quality": 95} if fmt == "JPEG" else {}
    with atomic_output(path, suffix=ext, prefix=TMP_PREFIX) as tmp:
        img.save(tmp, format=fmt, **options)


# --------------------------------------------------------------------------------------------------- faces


def make_detector(device: str):
    """facenet-pytorch's MTCNN with its bundled weights, keeping the largest face first."""
    from facenet_pytorch import MTCNN

    return MTCNN(min_face_size=MIN_FACE, select_largest=True, post_process=False, device=device)


def detect_faces(mtcnn, images: list) -> list:
    """The largest face box ``[x1, y1, x2, y2]`` (source pixels) of each equal-size image, or None."""
    if min(images[0].size) < MIN_FACE:
        return [None] * len(images)
    boxes, _ = mtcnn.detect(images)
    return [None if b is None else [float(v) for v in b[0]] for b in boxes]


def face_crop(img: Image.Image, box, size: int, margin: int) -> Image.Image:
    """facenet-pytorch's crop of ``box`` plus ``margin`` output pixels, resized to ``size`` x ``size``."""
    from facenet_pytorch import extract_face

    face = extract_face(img, box, image_size=size, margin=margin)  # 3 x size x size float tensor, values 0..255
    return Image.fromarray(face.permute(1, 2, 0).round().clamp(0, 255).byte().numpy())


def fallback_crop(img: Image.Image, size: int) -> Image.Image:
    """The largest centred square of ``img`` resized to ``size`` x ``size``."""
    return ImageOps.fit(img, (size, size), method=Image.BILINEAR, centering=(0.5, 0.5))


# --------------------------------------------------------------------------------------------------- report


@dataclass
class Report:
    """The no-face and unreadable images of ``dst``, written as ``dst/align_report.json``."""

    path: str
    size: int
    margin: int
    no_face: dict = field(default_factory=dict)  # image -> reason
    unreadable: dict = field(default_factory=dict)  # image -> error

    def as_json(self) -> dict:
        return {
            "size": self.size, "margin": self.margin, "detector": DETECTOR_DOC, "fallback": FALLBACK_DOC,
            "no_face": [{"image": k, "reason": v, "fallback": FALLBACK} for k, v in sorted(self.no_face.items())],
            "unreadable": [{"image": k, "error": v} for k, v in sorted(self.unreadable.items())],
        }

    def save(self) -> None:
        write_json_atomic(self.path, self.as_json(), indent=1)


def load_report(dst: str, size: int, margin: int) -> Report:
    """The report of an earlier run on ``dst`` (no-face entries whose outputs exist), or an empty one.

    Raises :class:`UserError` if that run used another size or margin, or its report cannot be read.
    """
    report = Report(os.path.join(dst, REPORT_NAME), size, margin)
    if not os.path.exists(report.path):
        return report
    try:
        with open(report.path, encoding="utf-8") as fh:
            old = json.load(fh)
        settings = (old["size"], old["margin"])
        entries = {e["image"]: e["reason"] for e in old["no_face"]}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"{report.path}: cannot read the report of an earlier run ({err}); "
                        f"expected the JSON this command writes (remove the file to start over)") from None
    if settings != (size, margin):
        raise UserError(f"{dst} was aligned with --size {settings[0]} --margin {settings[1]}, not --size {size} "
                        f"--margin {margin}; use the same settings to resume, or another --dst")
    report.no_face = {k: v for k, v in entries.items() if os.path.exists(os.path.join(dst, k))}
    return report


# --------------------------------------------------------------------------------------------------- run


@dataclass
class Counts:
    faces: int = 0
    no_face: int = 0
    unreadable: int = 0
    skipped: int = 0


def _size_groups(src: str, pending: list, batch_size: int, report: Report, counts: Counts) -> list:
    """``pending`` as batches of equal-size images by header size (the decoded size, EXIF orientation applied, is
    regrouped in :func:`_align_batch`); unreadable headers go to the report."""
    groups = {}
    for rel in pending:
        try:
            with Image.open(os.path.join(src, rel)) as im:
                key = im.size
        except _READ_ERRORS as err:
            report.unreadable[rel] = _error_text(err)
            counts.unreadable += 1
            continue
        groups.setdefault(key, []).append(rel)
    return [paths[i:i + batch_size] for paths in groups.values() for i in range(0, len(paths), batch_size)]


def _error_text(err: BaseException) -> str:
    return " ".join(f"{type(err).__name__}: {err}".split())


def _load_batch(src: str, batch: list, report: Report, counts: Counts) -> dict:
    """Decoded RGB images of ``batch`` grouped by size ``{(w, h): {rel: image}}``; failures go to the report."""
    by_size = {}
    for rel in batch:
        try:
            img = _read_rgb(os.path.join(src, rel))
        except _READ_ERRORS as err:
            report.unreadable[rel] = _error_text(err)
            counts.unreadable += 1
            continue
        by_size.setdefault(img.size, {})[rel] = img  # EXIF rotation can swap a header's width and height
    return by_size


def _crops(mtcnn, images: dict, report: Report, counts: Counts, size: int, margin: int) -> dict:
    """``{rel: output image}`` for equal-size ``images``: the face crop, or the fallback (recorded in the report)."""
    outputs = {}
    for (rel, img), box in zip(images.items(), detect_faces(mtcnn, list(images.values()))):
        if box is None:
            report.no_face[rel] = f"smaller than {MIN_FACE} px" if min(img.size) < MIN_FACE else "no face detected"
            outputs[rel] = fallback_crop(img, size)
            counts.no_face += 1
        else:
            outputs[rel] = face_crop(img, box, size, margin)
            counts.faces += 1
    return outputs


def _align_batch(mtcnn, src: str, dst: str, batch: list, report: Report, counts: Counts, size: int, margin: int):
    """Align one batch: the report is saved before the outputs, so it never misses an output's no-face entry."""
    outputs = {}
    for images in _load_batch(src, batch, report, counts).values():
        outputs.update(_crops(mtcnn, images, report, counts, size, margin))
    report.save()
    for rel, out in outputs.items():
        save_atomic(out, os.path.join(dst, rel))


def align_folder(src, dst, size: int = 224, margin: int = 0, batch_size: int = 32, device: str = "cpu",
                 progress: bool = True) -> dict:
    """Align every image under ``src`` into ``dst`` (see the module docstring); returns the summary counts."""
    from tqdm import tqdm

    src, dst = os.fspath(src), os.fspath(dst)
    _check_paths(src, dst)
    started = time.monotonic()
    images = find_images(src, dst)
    if not images:
        raise UserError(f"--src {src}: no images found (looked for {' '.join(IMAGE_EXTENSIONS)} recursively)")
    os.makedirs(dst, exist_ok=True)
    report = load_report(dst, size, margin)
    _remove_stale_temps(dst)
    pending = [rel for rel in images if not os.path.exists(os.path.join(dst, rel))]
    counts = Counts(skipped=len(images) - len(pending))
    batches = _size_groups(src, pending, batch_size, report, counts)
    mtcnn = make_detector(device) if batches else None
    with tqdm(total=len(pending), desc="align", unit="img", disable=not progress, file=sys.stderr) as bar:
        bar.update(counts.unreadable)
        for batch in batches:
            _align_batch(mtcnn, src, dst, batch, report, counts, size, margin)
            bar.update(len(batch))
    report.save()
    return {"processed": counts.faces + counts.no_face, "faces": counts.faces, "no_face": counts.no_face,
            "unreadable": counts.unreadable, "skipped": counts.skipped,
            "seconds": round(time.monotonic() - started, 2), "report": report.path}


def _check_paths(src: str, dst: str) -> None:
    if not os.path.isdir(src):
        what = "is not a directory" if os.path.exists(src) else "does not exist"
        raise UserError(f"--src {src} {what}; expected a folder of images")
    if os.path.exists(dst) and not os.path.isdir(dst):
        raise UserError(f"--dst {dst} exists and is not a directory; expected a folder (created if missing)")
    if os.path.realpath(src) == os.path.realpath(dst):
        raise UserError(f"--dst {dst} is --src itself; expected another folder (outputs keep the file names)")


def _check_options(a) -> None:
    if a.size < 1:
        raise UserError(f"--size must be a positive number of pixels, not {a.size}")
    if not 0 <= a.margin < a.size:
        raise UserError(f"--margin must be >= 0 and smaller than --size {a.size} (output pixels), not {a.margin}")
    if a.batch_size < 1:
        raise UserError(f"--batch_size must be >= 1, not {a.batch_size}")
    if a.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UserError("--device cuda was asked for but torch sees no CUDA device (use --device cpu)")


def _parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(prog="remop-usb align",
                description="Detect faces with facenet-pytorch's MTCNN and write size x size face crops, mirroring "
                            "the folder tree of --src into --dst; resumable; see dst/align_report.json.")
    p.add_argument("--src", required=True, help="folder of images (searched recursively)")
    p.add_argument("--dst", required=True, help="output folder (created; existing outputs are skipped)")
    p.add_argument("--size", type=int, default=224, help="output side in pixels (default 224, as in the paper)")
    p.add_argument("--margin", type=int, default=0,
                   help="pixels of the output added around MTCNN's box (facenet-pytorch's margin; default 0)")
    p.add_argument("--batch_size", type=int, default=32, help="images of equal size detected together")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    return p


def main(argv=None) -> int:
    a = _parser().parse_args(argv)
    _check_options(a)
    s = align_folder(a.src, a.dst, a.size, a.margin, a.batch_size, a.device, progress=not a.no_progress)
    print(f"align: {s['processed']} processed ({s['faces']} with a face, {s['no_face']} without: {FALLBACK}), "
          f"{s['skipped']} skipped (already in dst), {s['unreadable']} unreadable, {s['seconds']:.1f} s; "
          f"report {s['report']}")
    return 0
