"""``remop-usb plots RUN_DIR [--checkpoint last|best]``: a finished run's figures, drawn again.

It rebuilds the model from the run's ``config.json`` (:func:`remop_usb.launch.algorithm_from_run_dir`) and draws
every end-of-run figure again (:func:`remop_usb.figures.write_run_plots`; ``--checkpoint best``: t-SNE and beta
sweep of the best checkpoint). ``python -m remop_usb.experiments.plots RUN_DIR`` does the same. The leaderboard
draws its own figures (:mod:`.leaderboard`).
"""

from __future__ import annotations

import os

from ..errors import UserError
from ..fileio import read_json


def main(argv=None):
    """``remop-usb plots RUN_DIR [--checkpoint last|best]``: (re)draw a finished run's figures, beta sweep included."""
    import argparse

    from ..figures import write_run_plots
    from ..launch import algorithm_from_run_dir

    p = argparse.ArgumentParser(prog="remop-usb plots", description="Draw a finished run's figures again: "
                                "confusion matrices, per-class accuracy, pseudo-label quality, t-SNE and (ReMoP) the "
                                "beta sweep, with the chosen checkpoint.")
    p.add_argument("run_dir", help="a run's save dir (holds config.json, results.json, latest_model.pth)")
    p.add_argument("--checkpoint", choices=("last", "best"), default="last",
                   help="weights for t-SNE and the beta sweep (best: selected on the test split)")
    a = p.parse_args(argv)
    checkpoint = {"last": "latest_model.pth", "best": "model_best.pth"}[a.checkpoint]
    for needed in ("results.json", checkpoint):
        if not os.path.exists(os.path.join(a.run_dir, needed)):
            raise UserError(f"plots: {os.path.join(a.run_dir, needed)} not found (is the run finished?)")
    summary = read_json(os.path.join(a.run_dir, "results.json"), "plots")
    out = write_run_plots(algorithm_from_run_dir(a.run_dir), a.run_dir, summary, checkpoint)
    print("wrote " + ", ".join(sorted(out.values())))
    return 0


if __name__ == "__main__":
    import sys

    try:
        sys.exit(main())
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
