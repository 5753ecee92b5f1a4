"""The layout writers of the synthetic data: RAF-DB, CK+, FERPlus and AffectNet, each in its real on-disk layout.

Each writer decides labels, file names and formats, draws its faces with :mod:`.faces` and writes atomically with
the marker last (:mod:`.writing`). Same arguments give byte-identical files (for a given Pillow/libjpeg build, which
does the JPEG encoding). :func:`ensure_demo_rafdb` creates the RAF-DB demo on first use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from remop_usb.errors import UserError

from .. import affectnet, rafdb
from ..labels import CANONICAL, RAFDB_NAMES, RAFDB_TO_CANONICAL
from .faces import face_rng, iter_faces, render_face
from .writing import (JPEG_QUALITY, MARKER_NAME, AtomicDir, check_choice, check_int, is_empty_dir, noise_image,
                      shuffled_labels, split_counts, write_marker)

# ---------------------------------------------------------------------------------------------------------------
# RAF-DB
# ---------------------------------------------------------------------------------------------------------------

#: RAF-DB basic (single-label) set, images per RAF code 1..7 in the official partition.
RAFDB_TRAIN_COUNTS = {1: 1290, 2: 281, 3: 717, 4: 4772, 5: 1982, 6: 705, 7: 2524}
RAFDB_TEST_COUNTS = {1: 329, 2: 74, 3: 160, 4: 1185, 5: 478, 6: 162, 7: 680}


def rafdb_class_counts(num_train: int, num_test: int) -> Tuple[Dict[int, int], Dict[int, int]]:
    """Images per RAF code (1..7) for each split: RAF-DB's class proportions scaled by
    :func:`~.writing.largest_remainder`.

    When a split has at least 7 images every class gets at least one (taken from the largest class).
    """
    return split_counts(num_train, RAFDB_TRAIN_COUNTS), split_counts(num_test, RAFDB_TEST_COUNTS)


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
    num_train = check_int("num_train", num_train, 0)
    num_test = check_int("num_test", num_test, 0)
    size = check_int("size", size, 16)
    seed = check_int("seed", seed, 0)
    layout = check_choice("RAF-DB layout", layout, RAFDB_LAYOUTS)
    if num_train > 99999 or num_test > 9999:
        raise UserError("synthetic dataset: RAF-DB names allow at most 99999 train and 9999 test images")
    out = Path(out_dir)
    train_counts, test_counts = rafdb_class_counts(num_train, num_test)
    splits = (("train", 5, train_counts), ("test", 4, test_counts))
    lines: Dict[str, List[str]] = {"train": [], "test": []}
    with AtomicDir(out, overwrite) as tmp:
        for split, digits, counts in splits:
            stream = f"rafdb/{split}"
            codes = shuffled_labels(counts, seed, stream)
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
        write_marker(tmp, "rafdb-basic" if layout == "official" else f"rafdb-{layout}", args, counts_json,
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
    if path.exists() and not is_empty_dir(path):
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

    Codes follow :data:`CKPLUS_SEQUENCE_COUNTS` (:func:`split_counts`, so every code, contempt included, gets a
    sequence once ``num_labeled >= 7``); unlabeled sequences show a random expression. Subjects hold 1-6 sequences.
    ``counts``: those per-code counts when the caller has them already.
    """
    if counts is None:
        counts = split_counts(num_labeled, CKPLUS_SEQUENCE_COUNTS)
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
    from ..labels import CKPLUS_TO_CANONICAL

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
    num_labeled = check_int("num_labeled", num_labeled, 0)
    num_unlabeled = check_int("num_unlabeled", num_unlabeled, 0)
    size = check_int("size", size, 16)
    seed = check_int("seed", seed, 0)
    lo, hi = (check_int("frames", f, 2) for f in frames)
    if hi < lo:
        raise UserError(f"synthetic dataset: frames must be (min, max) with min <= max, got {frames!r}")
    from ..labels import CKPLUS_TO_CANONICAL

    counts = split_counts(num_labeled, CKPLUS_SEQUENCE_COUNTS)
    protocol = _ckplus_protocol_counts(counts)
    sequences = _ckplus_sequences(num_labeled, num_unlabeled, (lo, hi), seed, counts=counts)
    out = Path(out_dir)
    with AtomicDir(out, overwrite) as tmp:
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
        write_marker(tmp, "ckplus", args, info)
    return {"root": str(out), "image_dir": str(out / "cohn-kanade-images"), "emotion_dir": str(out / "Emotion"),
            "marker": str(out / MARKER_NAME),
            "counts": {"sequences": dict(counts), "unlabeled": num_unlabeled, "protocol": protocol}}


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
    columns = shuffled_labels(counts, seed, stream)
    rng = face_rng(seed, stream + "/votes", 0)
    rows = [("kept", _ferplus_kept_votes(c, i, rng)) for i, c in enumerate(columns)] + list(FERPLUS_EXTRA_ROWS)
    return [rows[i] for i in face_rng(seed, stream + "/rows", 0).permutation(len(rows))]


def _ferplus_image(votes: Sequence[int], seed: int, stream: str, i: int, size: int) -> Image.Image:
    """The grey face of row ``i``: the top-voted emotion's expression, or noise when NF has most votes."""
    from ..labels import FERPLUS_TO_CANONICAL

    if votes[9] > max(votes[:8]):
        return noise_image(seed, stream, i, size, "L")
    column = max(range(8), key=lambda c: votes[c])
    return render_face(FERPLUS_TO_CANONICAL[column], face_rng(seed, stream, i), size).convert("L")


def _ferplus_emotion(votes: Sequence[int]) -> int:
    """A FER2013 ``emotion`` code for fer2013.csv (the reader ignores it): the top emotion's, contempt -> 6."""
    from ..labels import FER2013_TO_CANONICAL, FERPLUS_TO_CANONICAL

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
    from ..ferplus import VOTE_COLUMNS

    nums = {"train": check_int("num_train", num_train, 0), "valid": check_int("num_valid", num_valid, 0),
            "test": check_int("num_test", num_test, 0)}
    size, seed = check_int("size", size, 16), check_int("seed", seed, 0)
    layout = check_choice("FERPlus layout", layout, FERPLUS_LAYOUTS)
    if layout == "csv" and size != 48:
        raise UserError(f"synthetic dataset: FERPlus csv layout stores 48x48 pixels, size must be 48, not {size}")
    counts = {split: split_counts(n, FERPLUS_TRAIN_COUNTS) for split, n in nums.items()}
    out = Path(out_dir)
    fer, new, labels, rows_written, r = [], [], {}, {}, 0
    with AtomicDir(out, overwrite) as tmp:
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
        write_marker(tmp, f"ferplus-{layout}", args, counts_json, rows=rows_written,
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
        return noise_image(seed, stream, i, size)
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

    nums = {"train": check_int("num_train", num_train, 0), "val": check_int("num_val", num_val, 0)}
    size, seed = check_int("size", size, 16), check_int("seed", seed, 0)
    layout = check_choice("AffectNet layout", layout, AFFECTNET_LAYOUTS)
    reference = {"train": AFFECTNET_TRAIN_COUNTS, "val": AFFECTNET_VAL_COUNTS}
    counts = {s: {**split_counts(n, reference[s]), **{c: 1 for c in AFFECTNET_DROPPED}} for s, n in nums.items()}
    out = Path(out_dir)
    with AtomicDir(out, overwrite) as tmp:
        for split, list_name, set_name in (("train", "training.csv", "train_set"),
                                           ("val", "validation.csv", "val_set")):
            stream = f"affectnet/{split}"
            lines = [",".join(affectnet.STANDARD_COLUMNS)]
            folder = tmp / set_name
            if layout == "npy":
                (folder / "images").mkdir(parents=True)
                (folder / "annotations").mkdir()
            for i, code in enumerate(shuffled_labels(counts[split], seed, stream)):
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
        write_marker(tmp, f"affectnet-{layout}", args, counts_json,
                      class_names={str(c): n for c, n in affectnet.EXPRESSION_NAMES.items()})
    return {"root": str(out), "layout": layout, "marker": str(out / MARKER_NAME),
            "counts": {s: dict(c) for s, c in counts.items()}}
