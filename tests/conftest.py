"""Shared fixtures: a small synthetic RAF-DB written once per test session (the generator is deterministic)."""

import os

import pytest

os.environ.setdefault("WANDB_MODE", "offline")


@pytest.fixture(scope="session")
def tiny_rafdb(tmp_path_factory):
    """A 280-train / 140-test synthetic RAF-DB at 32 px, in the official layout."""
    from datasets_fer.synthetic import write_rafdb

    root = tmp_path_factory.mktemp("rafdb") / "data"
    write_rafdb(root, num_train=280, num_test=140, size=32, seed=0)
    return str(root)


def train_argv(data_dir, save_dir, config="config/demo/remop_fixmatch.yaml", **overrides):
    """Command-line arguments for a few-iteration CPU run of ``config`` on ``data_dir``."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    values = dict(data_dir=data_dir, save_dir=str(save_dir), num_labels=20, lb_imb_ratio=10, img_size=32,
                  num_train_iter=6, epoch=1, num_eval_iter=3, num_log_iter=1, batch_size=4, eval_batch_size=64,
                  num_workers=0, device="cpu")
    values.update(overrides)
    argv = ["--c", os.path.join(repo, config)]
    for k, v in values.items():
        argv += [f"--{k}", str(v)]
    return argv
