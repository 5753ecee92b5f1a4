"""Every shipped demo config trains through train.py on one split; a config of each paper table trains a few
iterations on generated data in that table's layout (its own datasets, batch sizes, mu and pretrained-weights path)."""

import json
import os
import re
import shutil

import pytest
import torch
import torchvision
import yaml

from conftest import demo_configs, train_argv
from remop_usb.launch import main

pytestmark = pytest.mark.slow  # trains every demo config (about 2.5 minutes on 2 cores)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_CONFIGS = demo_configs()
SPLIT_KEYS = ("dataset", "data_dir", "num_labels", "lb_imb_ratio", "include_lb_to_ulb", "seed", "num_classes")


def _load(path):
    with open(os.path.join(REPO, path)) as f:
        return yaml.safe_load(f)


def _json(*parts):
    with open(os.path.join(*parts)) as f:
        return json.load(f)


def test_every_demo_config_asks_for_the_same_split():
    """The split is a function of the dataset files and these keys (tests/test_split.py): equal keys, equal split."""
    assert len(DEMO_CONFIGS) >= 10
    keys = {path: tuple(_load(path)[k] for k in SPLIT_KEYS) for path in DEMO_CONFIGS}
    assert len(set(keys.values())) == 1, keys
    assert next(iter(keys.values())) == ("rafdb", "./data/demo_rafdb", 50, 10, False, 0, 7)


def test_every_demo_config_trains_and_records_one_split(tiny_rafdb, tmp_path, demo_split_sha256):
    hashes = {}
    for path in DEMO_CONFIGS:
        name = os.path.splitext(os.path.basename(path))[0]
        assert main(train_argv(tiny_rafdb, tmp_path, config=path, save_name=name, num_train_iter=1,
                               num_eval_iter=1)) == 0, path
        res = _json(tmp_path, name, "results.json")
        cfg = _load(path)
        imb = None if cfg["imb_algorithm"] in (None, "None") else cfg["imb_algorithm"]
        assert (res["algorithm"], res["imb_algorithm"]) == (cfg["algorithm"], imb), path
        assert _json(tmp_path, name, "split.json")["sha256"] == res["split_sha256"]
        hashes[name] = res["split_sha256"]
        for checkpoint in ("latest_model.pth", "latest_model.prev.pth", "model_best.pth"):  # ~0.5 GB a run: CI's
            if os.path.exists(os.path.join(tmp_path, name, checkpoint)):                   # disk is small
                os.remove(os.path.join(tmp_path, name, checkpoint))
    assert set(hashes.values()) == {demo_split_sha256}, hashes


# -- one config of each paper table, on generated data in that table's layouts -----------------------------------

@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """Generated RAF-DB (official layout), CK+, FERPlus (Microsoft's CSV pair), AffectNet (CSV) and an MS-Celeb-style
    checkpoint (torchvision resnet18 weights under 'state_dict', random values)."""
    from datasets_fer.synthetic import write_affectnet, write_ckplus, write_ferplus, write_rafdb

    root = tmp_path_factory.mktemp("tables")
    write_rafdb(root / "RAF-DB", num_train=280, num_test=70, size=32, seed=3)
    write_ckplus(root / "CK+", num_labeled=10, num_unlabeled=2, size=32, frames=(2, 3))
    write_ferplus(root / "FERPlus", num_train=160, num_valid=24, num_test=24, size=48)
    write_affectnet(root / "AffectNet", num_train=60, num_val=16, size=32)
    torch.save({"state_dict": torchvision.models.resnet18().state_dict()}, root / "resnet18_msceleb.pth")
    return root


TABLE_RUNS = {
    # config: (overrides beyond the data folders, what results.json must show)
    "config/paper/table3/remop_fixmatch_rafdb_500_150.yaml": ({"num_labels": 20}, {"dataset": "rafdb"}),
    "config/paper/table4/remop_fixmatch_rafdb-ckplus_500_150.yaml": ({"num_labels": 20}, {"test_dataset": "ckplus"}),
    "config/paper/table4/remop_fixmatch_ferplus_1000_150.yaml": ({"num_labels": 30}, {"dataset": "ferplus"}),
    "config/paper/table5/remop_fixmatch_ferplus+affectnet.yaml": ({}, {"ulb_dataset": "affectnet"}),
}


@pytest.mark.parametrize("config", sorted(TABLE_RUNS))
def test_a_config_of_each_paper_table_trains(generated, tmp_path, capsys, config):
    overrides, shown = TABLE_RUNS[config]
    cfg = _load(config)
    folders = {"rafdb": "RAF-DB", "ferplus": "FERPlus", "ckplus": "CK+", "affectnet": "AffectNet"}
    data = {key: str(generated / folders[cfg[ds]]) for key, ds in (("data_dir", "dataset"),
                                                                  ("test_data_dir", "test_dataset"),
                                                                  ("ulb_data_dir", "ulb_dataset")) if cfg.get(ds)}
    split = {"num_labels": cfg["num_labels"], "lb_imb_ratio": cfg["lb_imb_ratio"], **overrides}  # the table's gamma
    argv = train_argv(data.pop("data_dir"), tmp_path, config=config, save_name="run", num_train_iter=2,
                      num_eval_iter=2, batch_size=2, pretrain_path=str(generated / "resnet18_msceleb.pth"),
                      **data, **split)
    assert cfg["use_pretrain"] is True  # the backbone is loaded from pretrain_path, as with the real checkpoint
    assert main(argv) == 0
    loaded = re.findall(r"resnet18_fer: loaded (\d+)/(\d+) trunk tensors from (\S+); missing from file: none",
                        capsys.readouterr().out)
    assert loaded and all(n == total and path.endswith("resnet18_msceleb.pth") for n, total, path in loaded)
    res = _json(tmp_path, "run", "results.json")
    run_config = _json(tmp_path, "run", "config.json")
    for key, value in shown.items():
        assert run_config[key] == value
    assert run_config["uratio"] == cfg["uratio"] and run_config["epoch"] == 1
    assert res["dataset"] == cfg["dataset"] and len(res["split_sha256"]) == 64
    if cfg.get("test_dataset"):
        assert res["best"]["test_heads"]["mixture"]["num_samples"] == 19  # the generated CK+'s 19 test images
