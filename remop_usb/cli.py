"""The ``remop-usb`` command: ``remop-usb <subcommand> ...``.

Subcommands: ``train`` (same as ``python train.py``), ``demo-data`` (write the synthetic RAF-DB) and ``bench``
(training-step cost of ReMoP+FixMatch, FixMatch and plain PyTorch; see :mod:`remop_usb.bench`).
"""

from __future__ import annotations

import argparse
import os
import sys

from .errors import UserError


def _demo_data(argv):
    p = argparse.ArgumentParser(prog="remop-usb demo-data",
                                description="Write the deterministic synthetic facial-expression dataset in "
                                            "RAF-DB's official layout (basic/EmoLabel, basic/Image/aligned).")
    p.add_argument("--out", required=True, help="target folder (must not exist or be empty)")
    p.add_argument("--num_train", type=int, default=2400)
    p.add_argument("--num_test", type=int, default=600)
    p.add_argument("--size", type=int, default=100, help="image side in pixels (RAF-DB aligned: 100)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    from datasets_fer.labels import RAFDB_NAMES
    from datasets_fer.synthetic import write_rafdb

    if os.path.exists(a.out) and (not os.path.isdir(a.out) or os.listdir(a.out)):
        raise UserError(f"--out {a.out} exists and is not an empty folder")
    info = write_rafdb(a.out, num_train=a.num_train, num_test=a.num_test, size=a.size, seed=a.seed)
    counts = {split: {RAFDB_NAMES[code]: n for code, n in per_code.items()} for split, per_code in info["counts"].items()}
    print(f"wrote a synthetic RAF-DB to {a.out}: {counts}")
    return 0


def _train(argv):
    from .launch import main as train_main

    return train_main(argv)


def _bench(argv):
    from .bench import main as bench_main

    return bench_main(argv)


COMMANDS = {"train": _train, "demo-data": _demo_data, "bench": _bench}


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(f"usage: remop-usb {{{','.join(COMMANDS)}}} ...", file=sys.stderr if argv else sys.stdout)
        if argv and argv[0] not in ("-h", "--help"):
            print(f"error: unknown subcommand '{argv[0]}'", file=sys.stderr)
            return 2
        return 0
    try:
        return COMMANDS[argv[0]](argv[1:])
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
