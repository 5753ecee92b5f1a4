"""remop-usb pretrain: the synthetic stand-in of the face-pretrained backbone."""

import os
import re

import numpy as np
import pytest
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
    assert "task must be one of identity, expression, actions, identity+actions, prototypes, got 'x'" in \
        one_line_error(PretrainSettings(task="x").check)
    assert "img_size must be at least 32" in one_line_error(PretrainSettings(img_size=16).check)


# --- action pretraining --------------------------------------------------------------------------------------------


def test_sample_actions_draws_each_action_independently_within_its_range():
    """Action k is active when the k-th of 15 uniforms is < ACTION_PROBABILITY; its value is lo + u * (hi - lo) with
    u the k-th of the next 15; the target divides by max(|lo|, hi). rng always advances by 30 uniforms."""
    from datasets_fer.synthetic import ACTION_RANGES

    rng, mirror = np.random.default_rng(3), np.random.default_rng(3)
    actions, target = pretrain.sample_actions(rng)
    gate, u = mirror.random(15), mirror.random(15)
    assert rng.random() == mirror.random()  # same position afterwards
    assert list(actions) == list(ACTION_RANGES) and target.dtype == np.float32 and target.shape == (15,)
    for k, (name, (lo, hi)) in enumerate(ACTION_RANGES.items()):
        expected = lo + u[k] * (hi - lo) if gate[k] < pretrain.ACTION_PROBABILITY else 0.0
        assert actions[name] == expected
        assert target[k] == np.float32(expected / max(-lo, hi))
    many = np.stack([pretrain.sample_actions(np.random.default_rng(s))[1] for s in range(2000)])
    assert abs((many != 0).mean() - pretrain.ACTION_PROBABILITY) < 0.01 and np.abs(many).max() <= 1.0
    assert set(np.flatnonzero((many < 0).any(axis=0))) == {0, 2, 7, 8, 10}  # curve, width, raise, inner, eye


def test_action_tasks_label_their_samples_with_the_drawn_actions():
    """actions: the label is the normalised action vector of the face, drawn from the sample's rng after the person;
    identity+actions: ``(person, actions)``, the face being that person's."""
    for task in ("actions", "identity+actions"):
        settings = PretrainSettings(task=task, identities=4, img_size=32)
        x, label = SyntheticFaces(settings, 3)[2]
        rng = face_rng(0, "pretrain/sample", 2)
        person = int(rng.integers(4))
        actions, target = pretrain.sample_actions(rng)
        identity = face_rng(0, "pretrain/identity", person) if task != "actions" else None
        image = np.asarray(render_face(0, rng, 32, identity=identity, actions=actions), dtype=np.float32)
        if rng.random() < 0.5:
            image = image[:, ::-1]
        from datasets_fer.transforms import MEAN, STD

        expected = (torch.from_numpy(image.copy()).permute(2, 0, 1) / 255.0 - torch.tensor(MEAN).view(3, 1, 1)) \
            / torch.tensor(STD).view(3, 1, 1)
        assert torch.equal(x, expected)
        if task == "actions":
            assert torch.equal(label, torch.from_numpy(target))
        else:
            assert label[0] == person and torch.equal(label[1], torch.from_numpy(target))


def test_action_heads_and_their_held_out_metrics():
    """fc: 15 action outputs (actions), or the people then the 15 actions (identity+actions); the info holds R^2
    and the mean absolute error of the actions (and the identity accuracy where there is an identity head)."""
    for task, rows, keys in (("actions", 15, {"heldout_r2", "heldout_mae", "heldout_mae_of_mean"}),
                             ("identity+actions", 4 + 15, {"heldout_accuracy", "heldout_r2", "heldout_mae",
                                                           "heldout_mae_of_mean"})):
        lines = []
        state, info = pretrain.train(PretrainSettings(task=task, identities=4, steps=2, batch_size=4, img_size=32),
                                     log=lines.append)
        assert state["fc.weight"].shape == (rows, 512) and set(info) == {"seconds"} | keys
        assert "actions R^2" in lines[0] and ("identity accuracy" in lines[0]) == (task != "actions")


def test_identity_plus_actions_adds_the_weighted_action_mse_to_the_identity_cross_entropy():
    """fc rows 0..identities-1 are the people's logits, the rest the actions; uniform logits (CE = ln 4) and an
    action error of 0.5 on one of 15 outputs (MSE 0.25 / 15) give ln 4 + ACTION_LOSS_WEIGHT * 0.25 / 15."""
    settings = PretrainSettings(task="identity+actions", identities=4)
    logits = torch.zeros(1, 4 + 15)
    logits[0, 4] = 0.5
    loss = pretrain._loss(settings, logits, (torch.tensor([2]), torch.zeros(1, 15)))
    assert loss.item() == pytest.approx(np.log(4) + pretrain.ACTION_LOSS_WEIGHT * 0.25 / 15)
    assert pretrain._loss(PretrainSettings(task="actions"), logits[:, 4:], torch.zeros(1, 15)).item() == \
        pytest.approx(0.25 / 15)


def test_regression_metrics_hand_computed():
    """Column 0: truth 0 1 2, predicted 0 1 1 -> SSE 1, SST 2, R^2 0.5; column 1 exact -> R^2 1; mean 0.75.
    Absolute errors 0 0 1 0 0 0 -> 1/6; of the column means (1, 2): 1 0 1 1 1 2 -> 1."""
    truth = torch.tensor([[0.0, 1.0], [1.0, 1.0], [2.0, 4.0]], dtype=torch.float64)
    predicted = torch.tensor([[0.0, 1.0], [1.0, 1.0], [1.0, 4.0]], dtype=torch.float64)
    assert pretrain._regression_metrics(predicted, truth) == {"heldout_r2": 0.75, "heldout_mae": round(1 / 6, 4),
                                                              "heldout_mae_of_mean": 1.0}


# --- reproducibility -----------------------------------------------------------------------------------------------

BUILD_SCRIPT = """
import sys, torch
from remop_usb import pretrain
pretrain.held_out_metrics = lambda model, settings: {}  # the weights are the point; save the 1024 renders
settings = pretrain.PretrainSettings(task="actions", steps=6, batch_size=8, img_size=32)
torch.save(pretrain.train(settings, log=lambda *_: None)[0], sys.argv[1])
print(torch.get_num_threads())
"""


def test_the_weights_do_not_depend_on_the_thread_count(tmp_path):
    """Built under OMP_NUM_THREADS=1 and =2, the weights are equal bit for bit (training is pinned to
    PRETRAIN_THREADS; unpinned, these two builds differ in 102 of 122 tensors), and the process keeps its own count."""
    import subprocess
    import sys

    states = []
    for threads in ("1", "2"):
        out = tmp_path / f"threads{threads}.pt"
        env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        done = subprocess.run([sys.executable, "-c", BUILD_SCRIPT, str(out)], env=env, capture_output=True,
                              text=True, check=True)
        assert done.stdout.split()[-1] == threads  # restored after training
        states.append(torch.load(out, weights_only=True))
    first, second = states
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_pinned_threads_restores_the_count():
    before = torch.get_num_threads()
    with pretrain.pinned_threads(before + 1):
        assert torch.get_num_threads() == before + 1
    assert torch.get_num_threads() == before


def test_the_cache_key_names_what_the_bytes_depend_on(monkeypatch):
    """torch version, CPU capability and the pinned thread count each change the key (a different build)."""
    import PIL

    key = TINY.key()
    env = pretrain.build_environment()
    assert env == {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                   "threads": pretrain.PRETRAIN_THREADS, "pillow": PIL.__version__}
    assert {type(v) for v in env.values()} == {str, int}  # weights_only loading refuses torch's TorchVersion
    for target, name, value in ((pretrain, "PRETRAIN_THREADS", pretrain.PRETRAIN_THREADS + 1),
                                (torch.backends.cpu, "get_cpu_capability", lambda: "another CPU"),
                                (torch, "__version__", "0.0.0"), (PIL, "__version__", "0.0.0")):
        monkeypatch.setattr(target, name, value)
        assert TINY.key() != key, name
        monkeypatch.undo()
    assert TINY.key() == key


# --- the command line and the probe --------------------------------------------------------------------------------


def test_cli_prints_the_seconds_and_whether_it_built(tmp_path, capsys, monkeypatch):
    args = ["--task", "actions", "--identities", "4", "--steps", "2", "--batch_size", "4", "--img_size", "32",
            "--cache_dir", str(tmp_path)]
    path = pretrain.cached_path(PretrainSettings(task="actions", identities=4, steps=2, batch_size=4, img_size=32),
                                str(tmp_path))
    assert pretrain.main(args) == 0
    assert re.fullmatch(re.escape(path) + r" \(built, \d+\.\d s\)", capsys.readouterr().out.splitlines()[-1])
    sizes = []

    def probe(p, size):
        sizes.append(size)
        return {"accuracy": 0.5, "mean_class_accuracy": 0.25, "confident": 0.125, "confident_accuracy": 1.0,
                "seconds": 2.0}

    monkeypatch.setattr(pretrain, "probe", probe)
    assert pretrain.main(args + ["--probe"]) == 0
    probe_line, last = capsys.readouterr().out.splitlines()[-2:]
    assert re.fullmatch(re.escape(path) + r" \(cached, \d+\.\d s\)", last)
    assert probe_line == ("[remop-usb] probe: accuracy 50.0%, mean class accuracy 25.0% (chance 14.3%); max "
                          "probability >= 0.95: 12.5% of test faces, 100.0% of them right (2.0 s)")
    assert pretrain.main(["--probe", path, "--img_size", "32"]) == 0
    assert capsys.readouterr().out == f"[remop-usb] {path}: " + probe_line[len("[remop-usb] "):] + "\n"
    assert sizes == [32, 32]  # probed at the size the backbone was built at, not the default 48


def test_probe_labels_follow_rafdb_and_a_balanced_test():
    """420 in RAF-DB's train proportions: quotas 44.15 9.62 24.54 163.32 67.84 24.13 86.39 (RAF codes 1-7) ->
    floors 44 9 24 163 67 24 86 (417), +1 to codes 5, 2, 3 -> canonical neutral 86, happy 163, sad 68, surprise 44,
    fear 10, disgust 25, anger 24; the test set 60 of each."""
    train, test = pretrain.probe_labels()
    assert [train.count(c) for c in range(7)] == [86, 163, 68, 44, 10, 25, 24]
    assert [test.count(c) for c in range(7)] == [60] * 7 and test == sorted(test)


def test_probe_of_a_checkpoint(tmp_path):
    """The probe reads the trunk through the face-checkpoint loader (a saved random initialisation scores as
    ``path=None``, a trained trunk otherwise); equal inputs give equal numbers."""
    from remop_usb.errors import UserError
    from remop_usb.nets.resnet_fer import ResNet18FER

    def numbers(path):
        return {k: v for k, v in pretrain.probe(path, num_train=70, num_test=35, size=32).items() if k != "seconds"}

    torch.manual_seed(0)
    random_init = tmp_path / "random.pth"
    torch.save({"state_dict": pretrain._msceleb_layout(ResNet18FER(7, dropout=0.0))}, random_init)
    trained = ensure_pretrained(TINY, cache_dir=str(tmp_path), log=lambda *_: None)
    result = numbers(trained)
    assert set(result) == {"accuracy", "mean_class_accuracy", "confident", "confident_accuracy"}
    assert result["accuracy"] == pytest.approx(result["mean_class_accuracy"])  # balanced test set
    assert 0 < result["accuracy"] <= 1 and 0 <= result["confident"] <= 1
    assert numbers(trained) == result and numbers(random_init) == numbers(None) != result
    with pytest.raises(UserError, match="no such file"):
        numbers(str(tmp_path / "missing.pth"))


def test_action_prototypes_are_fixed_strong_combinations_within_the_ranges():
    """Prototype p: 4-7 of the 15 actions, each at 0.8-1.0 of one end of its range, drawn from its own stream, so it
    does not depend on how many prototypes there are; none of them is one of the 7 expressions' patterns."""
    from datasets_fer.synthetic.faces import _EXPRESSION_DELTAS, ACTION_RANGES

    protos = [pretrain.action_prototype(0, p) for p in range(16)]
    assert protos[3] == pretrain.action_prototype(0, 3) and protos[3] != pretrain.action_prototype(1, 3)
    for proto in protos:
        assert 4 <= len(proto) <= 7
        for name, value in proto.items():
            lo, hi = ACTION_RANGES[name]
            end = hi if value > 0 else lo
            assert end != 0 and 0.8 - 1e-12 <= value / end <= 1.0 + 1e-12, (name, value, lo, hi)
    names = list(ACTION_RANGES)
    for proto in protos:  # a prototype's set of active actions is never an expression's
        for delta in _EXPRESSION_DELTAS.values():
            assert set(proto) != {k for k in names if delta.get(k, 0.0) != 0.0}


def test_prototype_samples_show_their_prototype_at_the_drawn_intensity():
    """Sample i: the person is drawn first (streams aligned across tasks), then the class and the intensity; the face
    is the prototype's actions times the intensity, and the label is the class."""
    from datasets_fer.transforms import MEAN, STD

    settings = PretrainSettings(task="prototypes", prototypes=5, img_size=32)
    assert settings.num_classes == 5 and settings.num_outputs == 5
    faces = SyntheticFaces(settings, 6)
    for i in range(6):
        x, label = faces[i]
        rng = face_rng(0, "pretrain/sample", i)
        rng.integers(settings.identities)
        cls, intensity = int(rng.integers(5)), float(rng.uniform(0.5, 1.0))
        assert label == cls
        actions = {k: intensity * v for k, v in pretrain.action_prototype(0, cls).items()}
        image = np.asarray(render_face(0, rng, 32, actions=actions), dtype=np.float32)
        if rng.random() < 0.5:
            image = image[:, ::-1]
        expected = (torch.from_numpy(image.copy()).permute(2, 0, 1) / 255.0 - torch.tensor(MEAN).view(3, 1, 1)) \
            / torch.tensor(STD).view(3, 1, 1)
        assert torch.equal(x, expected), i


def test_fewer_than_two_prototypes_are_refused():
    assert "pretrain: prototypes must be at least 2" in one_line_error(PretrainSettings(prototypes=1).check)
