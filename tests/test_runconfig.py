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
