"""The ``remop-usb`` command: ``remop-usb <subcommand> ...``.

Subcommands are listed in :data:`COMMANDS`, each implemented by a ``main(argv)`` in its own module. Output piped
into a reader that stops early (``remop-usb sweep ... --dry_run | head -3``) ends the command quietly with status 141
(128 + SIGPIPE, what a tool killed by SIGPIPE reports), without a traceback.
"""

from __future__ import annotations

import os
import signal
import sys

from .errors import OneLineArgumentParser, UserError


def _demo_data(argv):
    p = OneLineArgumentParser(prog="remop-usb demo-data",
                                description="Write a deterministic synthetic facial-expression dataset in a real "
                                            "dataset's on-disk layout (default: RAF-DB's official layout). Options "
                                            "left out take the writer's defaults.")
    p.add_argument("--out", required=True, help="target folder (must not exist or be empty)")
    p.add_argument("--dataset", default="rafdb", help="whose layout: rafdb, ckplus, ferplus or affectnet")
    p.add_argument("--layout", default=None, help="rafdb: official (default), label-file or class-folders; "
                   "ferplus: csv (default) or folders; affectnet: csv (default) or npy")
    p.add_argument("--num_train", type=int, default=None, help="training images (rafdb default 2400)")
    p.add_argument("--num_test", type=int, default=None, help="test images (rafdb default 600)")
    p.add_argument("--size", type=int, default=None, help="image side in pixels (default 100)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    import inspect

    from datasets_fer import demo_writer

    writer = demo_writer(a.dataset)
    options = {k: v for k, v in vars(a).items() if k not in ("out", "dataset") and v is not None}
    accepted = inspect.signature(writer).parameters
    for key in options:
        if key not in accepted:
            raise UserError(f"--{key} does not apply to --dataset {a.dataset} ({writer.__name__} takes "
                            f"{', '.join(n for n in accepted if n not in ('out_dir', 'overwrite'))})")
    if os.path.exists(a.out) and (not os.path.isdir(a.out) or os.listdir(a.out)):
        raise UserError(f"--out {a.out} exists and is not an empty folder")
    info = writer(a.out, **options)
    title = {"rafdb": "RAF-DB", "ckplus": "CK+", "ferplus": "FERPlus", "affectnet": "AffectNet"}.get(a.dataset)
    print(f"wrote a synthetic {title or a.dataset} to {a.out}: {info['counts']}")
    return 0


#: subcommand -> ("module:function" taking argv and returning an exit status, one-line description).
#: Modules are imported only when their subcommand runs.
COMMANDS = {
    "train": ("remop_usb.launch:main", "train one run (same as python train.py)"),
    "demo-data": ("remop_usb.cli:_demo_data", "write the synthetic demo dataset"),
    "split": ("datasets_fer.split_cli:main", "print a dataset's imbalanced split: counts per class and sha256"),
    "align": ("datasets_fer.align:main", "detect and align faces with MTCNN into a new folder"),
    "sweep": ("remop_usb.experiments.sweep:main", "run every (method, setting, seed) of a grid (here, per GPU or "
                                                  "as SLURM array tasks); --status DIR"),
    "leaderboard": ("remop_usb.experiments.leaderboard:main", "mean +- std table over seeds of a sweep's runs"),
    "plots": ("remop_usb.experiments.plots:main", "redraw a finished run's figures"),
    "bench": ("remop_usb.experiments.bench:main", "training-step and data-loader benchmark"),
    "pretrain": ("remop_usb.pretrain:main", "train the synthetic face-recognition backbone (MS-Celeb-1M stand-in)"),
    "inpl-cutoff": ("remop_usb.experiments.inpl_cutoff:main",
                    "measure InPL's energy cutoff on a base-learner checkpoint"),
}


def _usage():
    width = max(map(len, COMMANDS))
    rows = "\n".join(f"  {name:<{width}}  {about}" for name, (_, about) in COMMANDS.items())
    return f"usage: remop-usb <subcommand> [options]   (remop-usb <subcommand> --help for its options)\n{rows}"


def _command(name):
    import importlib

    module_name, function = COMMANDS[name][0].split(":")
    return getattr(importlib.import_module(module_name), function)


#: exit status when stdout is closed before the command is done
BROKEN_PIPE_STATUS = 128 + signal.SIGPIPE


def main(argv=None):
    try:
        status = _run(argv)
        sys.stdout.flush()  # what is still buffered meets a closed pipe here, not at interpreter exit
        return status
    except BrokenPipeError:
        # the reader is gone: nothing more is written (stdout to /dev/null, so the final flush is silent either)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return BROKEN_PIPE_STATUS


def _run(argv):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(_usage(), file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        if argv and argv[0] not in ("-h", "--help"):
            print(f"error: unknown subcommand '{argv[0]}'", file=sys.stderr)
            return 2
        return 0 if argv else 2
    try:
        return _command(argv[0])(argv[1:])
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
