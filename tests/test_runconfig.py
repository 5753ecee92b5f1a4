"""What identifies a run: configurations compared key by key, a key one side lacks taken at its default."""

from remop_usb.runconfig import differences

BASE = {"algorithm": "fixmatch", "imb_algorithm": "remop", "lr": 0.001, "remop_beta": 0.5, "save_dir": "a"}


def test_identity_keys_differ_and_placement_keys_do_not():
    assert differences(BASE, {**BASE, "save_dir": "elsewhere"}) == []
    assert differences({**BASE, "lr": 0.002}, BASE) == ["lr: 0.001 -> 0.002"]


def test_a_key_missing_on_one_side_counts_at_its_default():
    # a run made before rafdb_image_dir existed is the same experiment as one with its default 'aligned' ...
    assert differences({**BASE, "rafdb_image_dir": "aligned"}, BASE) == []
    assert differences(BASE, {**BASE, "remop_center_grad_scale": 1.0}) == []  # ReMoP's default
    # ... but not as one that reads another folder, nor one whose missing key had a non-default value
    assert differences({**BASE, "rafdb_image_dir": "mtcnn"}, BASE) == ["rafdb_image_dir: 'aligned' -> 'mtcnn'"]
    assert differences({k: v for k, v in BASE.items() if k != "remop_beta"}, {**BASE, "remop_beta": 0.3}) == [
        "remop_beta: 0.3 -> 0.5"]
    # a key no parser declares stays unset
    assert differences({**BASE, "made_up": 1}, BASE) == ["made_up: '<unset>' -> 1"]


def test_setting_name_tells_drawn_unlabeled_subsets_apart():
    """The W&B group / leaderboard setting names the unlabeled subset when one is drawn (consistent vs reversed are
    different settings with the same labeled split); the paper's natural setting keeps its name."""
    from remop_usb.runconfig import setting_name

    base = {"dataset": "rafdb", "num_labels": 40, "lb_imb_ratio": 10}
    assert setting_name({**base, "ulb_num_labels": None, "ulb_imb_ratio": 1}) == "rafdb-N40-g10"
    assert setting_name(base) == "rafdb-N40-g10"  # a results.json written before the keys existed
    assert setting_name({**base, "ulb_num_labels": 40, "ulb_imb_ratio": 10}) == "rafdb-N40-g10-M40-gu10"
    assert setting_name({**base, "ulb_num_labels": 40, "ulb_imb_ratio": -10}) == "rafdb-N40-g10-M40-gu-10"
