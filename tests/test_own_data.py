"""Training on a user's own data: the augmentation modes, the BatchNorm momentum chosen from the run's
length with re-estimation after one-shot pruning, and --val-fraction splits."""
import json
import re
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from onexn_tf import batchnorm
from onexn_tf._keras import keras, tf
from training import data, train, transforms
from training.synthetic import make_images, write_dataset
from conftest import gratings_folder

ROOT = Path(__file__).parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
SMALL = ["--arch", "mobilenet_v1", "--alpha", "0.25", "--input-size", "32", "--dataset", "folder",
         "--warmup-epochs", "0", "--verbose", "0", "--train-batch-size", "16", "--augment", "light"]


def ramp_image(size=64):
    """x-coordinate in channel 0, y in channel 1: a crop's position and a flip are readable from it."""
    yy, xx = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    return tf.constant(np.stack([xx * 255 // (size - 1), yy * 255 // (size - 1), np.zeros_like(xx)], -1), tf.uint8)


# -- augmentation ---------------------------------------------------------------------------------

@pytest.mark.parametrize("mode, low, high", [("reference", 0.08, 1.0), ("light", 0.64, 1.0)])
def test_crop_areas_stay_in_the_mode_range_and_span_it(mode, low, high):
    tf.random.set_seed(0)
    aug = transforms.augmentation(mode)
    areas = []
    for _ in range(300):
        _, extent = transforms.crop_box(tf.constant([200, 200, 3]), aug)
        areas.append(float(extent[0] * extent[1]) / 200 ** 2)
    areas = np.array(areas)
    assert areas.min() >= low - 0.01 and areas.max() <= high + 1e-9
    assert areas.min() < low + 0.15 * (high - low) and areas.max() > high - 0.15 * (high - low)  # spans it


def test_crop_scale_override_is_used():
    tf.random.set_seed(1)
    aug = transforms.augmentation("light", crop_scale=(0.25, 0.5))
    areas = [float(tf.reduce_prod(transforms.crop_box(tf.constant([120, 120, 3]), aug)[1][:2])) / 120 ** 2
             for _ in range(200)]
    assert 0.24 <= min(areas) and max(areas) <= 0.51 and max(areas) - min(areas) > 0.15


@pytest.mark.parametrize("mode, flag, flips", [("reference", None, True), ("reference", False, False),
                                               ("light", None, False), ("light", True, True),
                                               ("none", None, False)])
def test_flips_follow_the_mode_and_the_flag(mode, flag, flips):
    tf.random.set_seed(2)
    aug = transforms.augmentation(mode, hflip=flag)
    assert aug.hflip is flips
    image = ramp_image()
    mirrored = 0
    for _ in range(60):
        out = transforms.train_transform(image, 32, aug).numpy()[..., 0]
        mirrored += bool(out[:, 0].mean() > out[:, -1].mean())  # x decreases left to right: flipped
    assert (mirrored > 10) if flips else (mirrored == 0)


def test_none_is_the_eval_transform_and_the_identity_up_to_resize():
    image = ramp_image(37)  # 37 = round(32 · 256/224): the resize keeps the size
    aug = transforms.augmentation("none")
    out = transforms.train_transform(image, 32, aug)
    np.testing.assert_allclose(out.numpy(), transforms.eval_transform(image, 32).numpy())
    np.testing.assert_allclose(out.numpy(), image.numpy()[2:34, 2:34].astype(np.float32), atol=1e-3)


@pytest.mark.parametrize("kwargs, message", [
    ({"mode": "strong"}, "--augment 'strong' is not allowed"),
    ({"mode": "none", "crop_scale": (0.5, 1)}, "--crop-scale needs --augment reference or light"),
    ({"mode": "light", "crop_scale": (0.6, 0.5)}, "--crop-scale 0.6 0.5 is not allowed"),
    ({"mode": "light", "crop_scale": (0, 0.5)}, "--crop-scale 0 0.5 is not allowed"),
])
def test_bad_augmentation_is_refused(kwargs, message):
    with pytest.raises(Exception, match=message):
        transforms.augmentation(**kwargs)


# -- BatchNorm ------------------------------------------------------------------------------------

def test_run_length_momentum():
    assert batchnorm.run_length_momentum(5005, 90) == 0.999          # ImageNet at batch 256
    assert batchnorm.run_length_momentum(16, 4) == 0.9               # a tiny folder: the floor
    assert batchnorm.run_length_momentum(24, 4) == pytest.approx(0.01 ** (1 / 48), abs=1e-6)  # the demo
    m = batchnorm.run_length_momentum(390, 100)                      # 50k images at batch 128
    assert 0.99 < m < 0.999 and m ** (2 * 390) == pytest.approx(0.01, rel=1e-3)
    assert batchnorm.run_length_momentum(100, 1) < batchnorm.run_length_momentum(100, 5)  # a 1-epoch run


def test_recalibration_is_the_exact_mean_of_batch_statistics():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4, 4, 3))
    model = keras.Model(inputs, keras.layers.BatchNormalization(momentum=0.999)(inputs))
    batches = [np.random.default_rng(i).normal(i, 1 + i, (8, 4, 4, 3)).astype(np.float32) for i in range(3)]
    assert batchnorm.recalibrate_batchnorm(model, iter(batches), batches=2) == 2
    bn = model.layers[1]
    np.testing.assert_allclose(bn.moving_mean.numpy(), np.mean([b.mean((0, 1, 2)) for b in batches[:2]], 0),
                               rtol=1e-5)
    n = 8 * 4 * 4  # Keras keeps the unbiased batch variance
    want_var = np.mean([b.var((0, 1, 2)) * n / (n - 1) for b in batches[:2]], 0)
    np.testing.assert_allclose(bn.moving_variance.numpy(), want_var, rtol=1e-4)
    assert bn.momentum == 0.999  # restored


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    return gratings_folder(tmp_path_factory, train=256, val=128, name="demo_data")


@pytest.fixture(scope="module")
def dense_model(demo_data, tmp_path_factory):
    job = tmp_path_factory.mktemp("dense") / "job"
    train.run_job(train.build_parser().parse_args([*SMALL, "--data-dir", str(demo_data), "--criterion", "dense",
                                                   "--epochs", "10", "--lr", "0.05", "--job-dir", str(job)]))
    return job / "model.keras"


def prune_one_epoch(demo_data, dense_model, job, *extra):
    args = train.build_parser().parse_args([
        *SMALL, "--data-dir", str(demo_data), "--pretrained-model", str(dense_model), "--N", "4",
        "--pr-target", "0.7", "--epochs", "1", "--lr", "0.01", "--job-dir", str(job), *extra])
    results = train.run_job(args)
    return results["epochs"][0]["train_top1"], results["epochs"][0]["top1"], results


def test_default_batchnorm_settles_after_one_shot_pruning(demo_data, dense_model, tmp_path):
    train_top1, val_top1, results = prune_one_epoch(demo_data, dense_model, tmp_path / "default")
    assert results["bn_momentum"]["value"] == 0.9 and results["bn_momentum"]["source"].startswith("run length")
    assert results["bn_recalibration"] == {"batches": 20, "used": 16}
    assert val_top1 >= train_top1 - 0.1 and val_top1 > 0.5, (train_top1, val_top1)

    # The reference's momentum without re-estimation: the statistics of the dense start stay.
    old_train, old_val, old = prune_one_epoch(demo_data, dense_model, tmp_path / "old", "--bn-momentum", "0.999",
                                              "--bn-recalibration", "0")
    assert old["bn_momentum"] == {"value": 0.999, "source": "--bn-momentum"} and old["bn_recalibration"]["used"] is None
    assert old_val < old_train - 0.2 and old_val < val_top1 - 0.2, (old_train, old_val, val_top1)


# -- --val-fraction -------------------------------------------------------------------------------

def write_class_tree(root, per_class=(10, 7, 3)):
    images, _ = make_images(sum(per_class), classes=2, size=16, seed=0)
    i = 0
    for c, count in enumerate(per_class):
        folder = root / f"class_{c}"
        folder.mkdir(parents=True)
        for k in range(count):
            tf.io.write_file(str(folder / f"img_{k:03d}.png"), tf.io.encode_png(images[i]))
            i += 1


def test_val_fraction_splits_deterministically_with_every_class_on_both_sides(tmp_path):
    write_class_tree(tmp_path / "tree")
    train_items, val_items, names = data.split_by_fraction(tmp_path / "tree", 0.3)
    assert names == ["class_0", "class_1", "class_2"]
    per_class = lambda items, c: sum(label == c for _, label in items)  # noqa: E731
    assert [per_class(val_items, c) for c in range(3)] == [3, 2, 1]
    assert [per_class(train_items, c) for c in range(3)] == [7, 5, 2]
    assert not {p for p, _ in train_items} & {p for p, _ in val_items}
    again = data.split_by_fraction(tmp_path / "tree", 0.3)
    assert again == (train_items, val_items, names)
    # An image added later leaves the others where they were (the rank is the file name's hash).
    images, _ = make_images(1, classes=2, size=16, seed=5)
    tf.io.write_file(str(tmp_path / "tree" / "class_0" / "img_999.png"), tf.io.encode_png(images[0]))
    moved = data.split_by_fraction(tmp_path / "tree", 0.3)
    old_train, old_val = {p for p, _ in train_items}, {p for p, _ in val_items}
    assert old_train <= {p for p, _ in moved[0]} and len(old_val - {p for p, _ in moved[1]}) <= 1
    splits = data.load(dataset="folder", data_dir=str(tmp_path / "tree"), size=16, batch_size=4,
                       preprocess=lambda x: x, val_fraction=0.3)
    assert (splits.train_examples, splits.val_examples, splits.num_classes) == (15, 6, 3)  # with the added one
    assert sum(int(b[0].shape[0]) for b in splits.val) == 6


@pytest.mark.parametrize("case, message", [
    ("zero", "--val-fraction=0 is not allowed: it must be between 0 and 1"),
    ("one", "--val-fraction=1 is not allowed: it must be between 0 and 1"),
    ("split_tree", "drop --val-fraction"),
    ("single_image", "holds 1 image: --val-fraction needs at least 2 per class"),
    ("tfds", "--val-fraction needs --dataset folder"),
])
def test_bad_val_fraction_is_one_clear_line(case, message, tmp_path):
    tree = tmp_path / "tree"
    if case == "split_tree":
        write_dataset(tree, classes=2, size=16, train=4, val=4)
    else:
        write_class_tree(tree, per_class=(3, 1) if case == "single_image" else (3, 3))
    fraction = {"zero": "0", "one": "1"}.get(case, "0.3")
    dataset = ["--dataset", "mnist"] if case == "tfds" else []
    proc = subprocess.run([sys.executable, "-m", "training", *SMALL, "--data-dir", str(tree), *dataset,
                           "--val-fraction", fraction, "--epochs", "1", "--job-dir", str(tmp_path / "job")],
                          capture_output=True, text=True, timeout=300, cwd=ROOT, env=ENV)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("onexn-train: error:")]
    assert len(errors) == 1 and message in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and not (tmp_path / "job" / "config.json").exists()


def test_train_and_eval_on_a_val_fraction_tree(tmp_path):
    write_class_tree(tmp_path / "tree", per_class=(12, 12, 12))
    job = tmp_path / "job"
    results = train.run_job(train.build_parser().parse_args([
        *SMALL, "--data-dir", str(tmp_path / "tree"), "--val-fraction", "0.25", "--criterion", "dense",
        "--epochs", "1", "--lr", "0.05", "--augment", "none", "--job-dir", str(job)]))
    assert (results["train_examples"], results["val_examples"], results["val_fraction"]) == (27, 9, 0.25)
    assert results["augmentation"] == {"mode": "none", "crop_scale": None, "aspect": [1.0, 1.0], "hflip": False}
    config = json.loads((job / "config.json").read_text())
    assert config["val_fraction"] == 0.25 and config["augmentation"]["mode"] == "none"
    proc = subprocess.run([sys.executable, "-m", "training.evaluate", str(job), "--json", str(tmp_path / "e.json")],
                          capture_output=True, text=True, timeout=300, cwd=ROOT, env=ENV)
    assert proc.returncode == 0, proc.stderr[-2000:]
    evaluated = json.loads((tmp_path / "e.json").read_text())
    assert evaluated["examples"] == 9 and evaluated["val_fraction"] == 0.25
    assert evaluated["top1"] == pytest.approx(results["best"]["top1"], abs=1e-6)


@pytest.mark.parametrize("case, message", [
    ("one_class", "has 1 class folder (a): classification needs at least 2"),
    ("classes_differ", "the split folders hold different classes (val/ lacks c)"),
    ("one_class_tree", "has 1 class folder (only): classification needs at least 2"),
])
def test_data_a_classifier_cannot_be_scored_on_is_refused(case, message, tmp_path):
    """One class trains to a meaningless "100 %"; splits naming different classes would be re-indexed."""
    images, _ = make_images(2, classes=2, size=16, seed=0)
    layout = {"one_class": ["train/a", "val/a"], "classes_differ": ["train/a", "train/b", "train/c", "val/a", "val/b"],
              "one_class_tree": ["only"]}[case]
    for folder in layout:
        (tmp_path / "data" / folder).mkdir(parents=True)
        for k, image in enumerate(images):
            tf.io.write_file(str(tmp_path / "data" / folder / f"{k}.png"), tf.io.encode_png(image))
    extra = ["--val-fraction", "0.5"] if case == "one_class_tree" else []
    with pytest.raises(data.UsageError, match=re.escape(message)):
        train.run_job(train.build_parser().parse_args([*SMALL, "--data-dir", str(tmp_path / "data"), *extra,
                                                       "--epochs", "1", "--job-dir", str(tmp_path / "job")]))
    assert not (tmp_path / "job" / "config.json").exists()


def test_config_paths_are_absolute_so_the_job_reads_from_anywhere(demo_data, tmp_path, monkeypatch):
    monkeypatch.chdir(demo_data.parent)
    job = tmp_path / "job"
    train.run_job(train.build_parser().parse_args([*SMALL, "--data-dir", demo_data.name, "--criterion", "dense",
                                                   "--epochs", "1", "--lr", "0.05", "--job-dir", str(job)]))
    config = json.loads((job / "config.json").read_text())
    assert config["data_dir"] == str(demo_data.resolve()) and Path(config["job_dir"]).is_absolute()
    proc = subprocess.run([sys.executable, "-m", "training.evaluate", str(job)], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path, env=ENV)  # another working directory
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["examples"] == 128


def test_a_finished_job_gets_one_answer_with_or_without_resume(demo_data, tmp_path):
    job = tmp_path / "job"
    argv = [*SMALL, "--data-dir", str(demo_data), "--criterion", "dense", "--epochs", "1", "--job-dir", str(job)]
    train.run_job(train.build_parser().parse_args(argv))
    for extra in ([], ["--resume"]):
        with pytest.raises(data.UsageError, match="holds a finished run \\(results.json\\): nothing to resume"):
            train.run_job(train.build_parser().parse_args(argv + extra))
    with pytest.raises(data.UsageError, match="^--lr=-1 is not allowed: it must be positive$"):
        train.run_job(train.build_parser().parse_args(argv + ["--lr", "-1"]))
