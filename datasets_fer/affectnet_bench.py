"""Benchmark of the AffectNet index at full size: ``python -m datasets_fer.affectnet_bench [--npy] [--no-images]``.

Writes a synthetic ``training.csv`` with AffectNet's 287,651 rows of codes 0-7 (the real per-class counts, real
line lengths: 68 landmarks per row) plus a 3,999-row ``validation.csv`` into a temporary folder, then times
:func:`datasets_fer.affectnet.read_affectnet`:

* parse: ``check_images=False``, empty cache (parses both lists and saves the index cache);
* cached: the same call again (loads the cache);
* exists: ``check_images=True`` over empty placeholder files in 1,000 sub-folders (one ``os.scandir`` per folder;
  the placeholders are created first, unless ``--no-images``). They go to a RAM-backed folder (``/dev/shm`` where
  it exists; ``--placeholders DIR`` to choose) linked as ``Manually_Annotated_Images``: creating 287k files spread
  over 1,000 folders on a busy disk can take many minutes, which would measure the disk, not the reader;
* with ``--npy``: the npy layout, 287,651 ``<n>_exp.npy`` files read one by one, then from the cache.

Each step reports wall time and the growth of the process's peak RSS; the parse step is repeated under
``tracemalloc`` for the peak of Python allocations (tracemalloc slows it, so its time is not the one reported).
Nothing is rendered: the images are empty files. The folder is removed at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import resource
import shutil
import tempfile
import time
import tracemalloc

import numpy as np

from datasets_fer.affectnet import STANDARD_COLUMNS, read_affectnet
from datasets_fer.synthetic import AFFECTNET_TRAIN_COUNTS, largest_remainder

NUM_TRAIN = sum(AFFECTNET_TRAIN_COUNTS.values())  # 287,651
NUM_VAL = 3999
SUBDIRS = 1000
_LANDMARK_POOL = 64


def _codes(total: int, seed: int) -> np.ndarray:
    counts = largest_remainder(total, [AFFECTNET_TRAIN_COUNTS[c] for c in range(8)])
    codes = np.repeat(np.arange(8, dtype=np.int8), counts)
    return codes[np.random.default_rng(seed).permutation(total)]


def _landmarks(rng: np.random.Generator):
    return [";".join(f"{v:.2f}" for v in rng.uniform(0, 900, 136)) for _ in range(_LANDMARK_POOL)]


def _rel(split: str, i: int) -> str:
    return f"{1 + i % SUBDIRS}/{hashlib.sha224(f'{split}{i}'.encode()).hexdigest()}.jpg"


def write_lists(root: str, num_train: int, num_val: int, seed: int = 0) -> dict:
    """The two AffectNet lists (codes 0-7 only) under ``root``; returns split -> relative image paths."""
    rng = np.random.default_rng(seed)
    marks = _landmarks(rng)
    os.makedirs(root, exist_ok=True)
    rels = {}
    for split, name, n in (("train", "training.csv", num_train), ("val", "validation.csv", num_val)):
        codes = _codes(n, seed) if split == "train" else np.arange(n, dtype=np.int8) % 8
        rels[split] = [_rel(split, i) for i in range(n)]
        with open(os.path.join(root, name), "w", encoding="utf-8") as f:
            f.write(",".join(STANDARD_COLUMNS) + "\n")
            f.writelines(f"{rel},68,68,410,410,{marks[i % _LANDMARK_POOL]},{int(c)},0.785714,-0.055556\n"
                         for i, (rel, c) in enumerate(zip(rels[split], codes.tolist())))
    return rels


def touch_all(folder: str, rels) -> None:
    """Empty placeholder files ``folder/<rel>``."""
    made = set()
    for rel in rels:
        sub = os.path.dirname(rel)
        if sub not in made:
            os.makedirs(os.path.join(folder, sub), exist_ok=True)
            made.add(sub)
        open(os.path.join(folder, rel), "wb").close()


def write_npy_sets(root: str, num_train: int, num_val: int, seed: int = 0) -> None:
    """``train_set`` / ``val_set`` with ``annotations/<n>_exp.npy`` (as np.save writes '3') and empty images."""
    templates = {}
    for c in range(8):
        buf = io.BytesIO()
        np.save(buf, np.asarray(str(c)))
        templates[c] = buf.getvalue()
    for set_name, n in (("train_set", num_train), ("val_set", num_val)):
        codes = _codes(n, seed) if set_name == "train_set" else np.arange(n, dtype=np.int8) % 8
        ann, img = os.path.join(root, set_name, "annotations"), os.path.join(root, set_name, "images")
        os.makedirs(ann)
        os.makedirs(img)
        for i, c in enumerate(codes.tolist()):
            with open(os.path.join(ann, f"{i}_exp.npy"), "wb") as f:
                f.write(templates[c])
            open(os.path.join(img, f"{i}.jpg"), "wb").close()


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def timed(label: str, fn, results: list):
    rss0 = _peak_rss_mib()
    t0 = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t0
    results.append((label, dt, _peak_rss_mib() - rss0))
    print(f"  {label:<44} {dt:8.2f} s   peak RSS +{results[-1][2]:7.1f} MiB", flush=True)
    return out


def traced_peak(fn) -> float:
    """Peak MiB of Python allocations while ``fn`` runs (tracemalloc)."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=NUM_TRAIN, help="training rows (default 287651)")
    ap.add_argument("--dir", default=None, help="work folder (default: a new temporary folder)")
    ap.add_argument("--no-images", action="store_true", help="skip the existence check over placeholder files")
    ap.add_argument("--npy", action="store_true", help="also time the npy layout (287k small files)")
    ap.add_argument("--placeholders", default="/dev/shm" if os.access("/dev/shm", os.W_OK) else None,
                    help="folder in which to create the empty images (default /dev/shm when writable)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    args = ap.parse_args(argv)
    work = args.dir or tempfile.mkdtemp(prefix="affectnet-bench-")
    ram = tempfile.mkdtemp(prefix="affectnet-bench-", dir=args.placeholders) if args.placeholders else None
    results: list = []
    try:
        csv_root, cache = os.path.join(work, "csv"), os.path.join(work, "cache")
        t0 = time.perf_counter()
        rels = write_lists(csv_root, args.rows, NUM_VAL)
        size = os.path.getsize(os.path.join(csv_root, "training.csv")) / 2**20
        print(f"wrote training.csv ({args.rows} rows, {size:.0f} MiB) and validation.csv ({NUM_VAL} rows) in "
              f"{time.perf_counter() - t0:.1f} s under {work}", flush=True)

        def read(**kw):
            return read_affectnet(csv_root, **kw)

        index = timed("csv layout: parse (check_images=False)", lambda: read(check_images=False, cache_dir=cache),
                      results)
        expected = largest_remainder(args.rows, [AFFECTNET_TRAIN_COUNTS[c] for c in range(8)])
        assert len(index.train_paths) == args.rows and index.counts("train") == expected, "wrong index"
        timed("csv layout: cached (check_images=False)", lambda: read(check_images=False, cache_dir=cache), results)
        peak = traced_peak(lambda: read(check_images=False, cache_dir=os.path.join(work, "cache-traced")))
        print(f"  {'csv layout: parse, tracemalloc peak':<44} {peak:8.1f} MiB of Python allocations", flush=True)
        if not args.no_images:
            t0 = time.perf_counter()
            images = os.path.join(csv_root, "Manually_Annotated_Images")
            if ram:
                os.symlink(ram, images)
            touch_all(images, rels["train"] + rels["val"])
            print(f"created {len(rels['train']) + len(rels['val'])} empty placeholder images in "
                  f"{time.perf_counter() - t0:.1f} s", flush=True)
            timed("csv layout: cached + check_images=True", lambda: read(check_images=True, cache_dir=cache), results)
        if args.npy:
            npy_root = os.path.join(ram or work, "npy")
            t0 = time.perf_counter()
            write_npy_sets(npy_root, args.rows, NUM_VAL)
            print(f"wrote {args.rows + NUM_VAL} _exp.npy files and empty images in {time.perf_counter() - t0:.1f} s",
                  flush=True)
            npy_cache = os.path.join(work, "cache-npy")
            timed("npy layout: read every _exp.npy (check_images=False)",
                  lambda: read_affectnet(npy_root, check_images=False, cache_dir=npy_cache), results)
            timed("npy layout: cached + check_images=True",
                  lambda: read_affectnet(npy_root, check_images=True, cache_dir=npy_cache), results)
        print(f"process peak RSS {_peak_rss_mib():.0f} MiB", flush=True)
    finally:
        if not args.keep and not args.dir:
            shutil.rmtree(work, ignore_errors=True)
        if not args.keep and ram:
            shutil.rmtree(ram, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
