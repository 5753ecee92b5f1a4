"""remop-usb pretrain: the synthetic stand-in of the face-pretrained backbone."""

import os

import numpy as np
import torch

from conftest import one_line_error
from datasets_fer.synthetic import face_rng, render_face
from remop_usb import pretrain
from remop_usb.pretrain import PretrainSettings, SyntheticFaces, ensure_pretrained

TINY = PretrainSettings(task="identity", identities=4, steps=3, batch_size=4, img_size=32)


def test_a_person_keeps_their_traits_under_new_pose_lighting_and_expression():
    """render_face(identity=g): equal identity generators give the same person; the image without one is the same
    as before the option existed (the identity draws come from the same generator, in the same order)."""
    a = np.asarray(render_face(1, face_rng(0, "n", 1), 48, identity=face_rng(0, "id", 3)))
    again = np.asarray(render_face(1, face_rng(0, "n", 1), 48, identity=face_rng(0, "id", 3)))
    other_person = np.asarray(render_face(1, face_rng(0, "n", 1), 48, identity=face_rng(0, "id", 4)))
    assert np.array_equal(a, again) and not np.array_equal(a, other_person)
    plain = np.asarray(render_face(1, face_rng(0, "n", 1), 48))
    assert np.array_equal(plain, np.asarray(render_face(1, face_rng(0, "n", 1), 48, identity=None)))


def test_sample_stream_labels():
    faces = SyntheticFaces(TINY, 8)
    labels = [faces[i][1] for i in range(8)]
    assert all(0 <= y < 4 for y in labels) and faces[0][0].shape == (3, 32, 32)
    assert [faces[i][1] for i in range(8)] == labels  # sample i depends only on (seed, i)
    expression = SyntheticFaces(PretrainSettings(task="expression", img_size=32), 8)
    assert all(0 <= expression[i][1] < 7 for i in range(8))


def test_training_is_deterministic_and_written_in_the_msceleb_layout(tmp_path):
    """Two trainings give the same weights; the file is {'state_dict': torchvision names + fc} and the FER net's
    loader takes every trunk tensor from it, as from resnet18_msceleb.pth."""
    from remop_usb.nets.resnet_fer import TRUNK_MODULES, load_face_checkpoint, resnet18_fer

    first, _ = pretrain.train(TINY, log=lambda *_: None)
    second, _ = pretrain.train(TINY, log=lambda *_: None)
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    assert first["fc.weight"].shape == (4, 512) and "conv1.weight" in first and "classifier.weight" not in first
    assert {k.split(".")[0] for k in first} == set(TRUNK_MODULES[:1] + ("bn1", "layer1", "layer2", "layer3",
                                                                        "layer4", "fc"))
    path = ensure_pretrained(TINY, cache_dir=str(tmp_path), log=lambda *_: None)
    assert path == os.path.join(str(tmp_path), "pretrain", TINY.key(), pretrain.CHECKPOINT_NAME)
    stamp = os.stat(path).st_mtime_ns
    assert ensure_pretrained(TINY, cache_dir=str(tmp_path)) == path and os.stat(path).st_mtime_ns == stamp  # cached
    net = resnet18_fer(7)
    info = load_face_checkpoint(net, path, log=lambda *_: None)
    assert info["missing"] == [] and sorted(info["unused"]) == ["fc.bias", "fc.weight"]
    assert torch.equal(net.state_dict()["layer4.1.conv2.weight"], first["layer4.1.conv2.weight"])


def test_demo_pretrain_loads_the_cached_stand_in(tiny_rafdb, tmp_path, monkeypatch):
    """demo_pretrain: True with an empty pretrain_path: the cached stand-in is loaded like real weights."""
    from conftest import build_for
    from remop_usb.usb_compat import unwrap

    monkeypatch.setattr(pretrain, "DEMO_SETTINGS", TINY)
    path = ensure_pretrained(TINY, cache_dir=str(tmp_path), log=lambda *_: None)
    algorithm = build_for(tiny_rafdb, tmp_path, config="config/demo/fixmatch.yaml", demo_pretrain=True,
                          use_pretrain=True, pretrain_path="", cache_dir=str(tmp_path))
    assert algorithm.args.pretrain_path == path
    expected = torch.load(path, weights_only=True)["state_dict"]["layer1.0.conv1.weight"]
    assert torch.equal(unwrap(algorithm.model).state_dict()["layer1.0.conv1.weight"], expected)


def test_bad_settings_are_one_line():
    assert "steps must be a positive integer" in one_line_error(PretrainSettings(steps=0).check)
    assert "task must be one of identity, expression" in one_line_error(PretrainSettings(task="x").check)
    assert "img_size must be at least 32" in one_line_error(PretrainSettings(img_size=16).check)
