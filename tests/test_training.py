"""onexn-train / onexn-eval: the CLI on an image folder, kill + resume, MirroredStrategy, bad input,
and the recipe pieces (learning-rate policies, PyTorch-style SGD, top-k) against hand-computed values."""
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import onexn_tf
from onexn_tf import jobs, masks, models, rearrange
from onexn_tf._keras import keras, tf
from training import data, recipe, transforms
from training.metrics import topk_hits
from training.synthetic import write_dataset
from conftest import assert_exact_1xn, gratings_folder, sigint_default

ROOT = Path(__file__).parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
SMALL = ["--arch", "mobilenet_v1", "--alpha", "0.25", "--input-size", "32", "--dataset", "folder",
         "--warmup-epochs", "0", "--lr", "0.05", "--verbose", "2"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return gratings_folder(tmp_path_factory, train=64, val=32)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A dense V1 (4 classes) saved as .keras: the job's --pretrained-model."""
    keras.utils.set_random_seed(3)
    model = onexn_tf.models.build("mobilenet_v1", alpha=0.25, input_shape=(32, 32, 3), classes=4)
    path = tmp_path_factory.mktemp("pretrained") / "dense.keras"
    model.save(path)
    return path


def train(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "training", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=ENV)


def expected_masks(pretrained, policy, n=4, p=0.5):
    """The one-shot masks the job must end with: computed from the pretrained weights."""
    model = keras.models.load_model(pretrained)
    names = onexn_tf.models.prunable_layers(model)
    orders = rearrange.policy_permutations(model, names, policy)
    return {name: masks.compute_mask(model.get_layer(name).kernel.numpy(), p, n=n, perm=orders.get(name)).mask
            for name in names}


def test_one_epoch_on_an_image_folder(folder, pretrained, tmp_path):
    job = tmp_path / "job"
    proc = train(*SMALL, "--data-dir", str(folder), "--pretrained-model", str(pretrained), "--epochs", "1",
                 "--train-batch-size", "16", "--N", "4", "--pr-target", "0.5", "--rearrange", "groups",
                 "--job-dir", str(job))
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((job / "results.json").read_text())
    for key in ("arch", "n", "criterion", "pr_target", "layers", "epochs", "best", "wall_time_s", "versions"):
        assert key in results
    assert (results["arch"], results["n"], results["criterion"], results["num_classes"]) == (
        "mobilenet_v1", 4, "block_l1", 4)
    assert [e["epoch"] for e in results["epochs"]] == [0]
    assert 0 <= results["epochs"][0]["top1"] <= 1 and results["epochs"][0]["top5"] == 1.0  # 4 classes
    assert len(results["layers"]) == 13 and all(layer["exact"] for layer in results["layers"])
    assert all(layer["sparsity"] == 0.5 for layer in results["layers"])

    model = keras.models.load_model(job / "model.keras")
    perms = json.loads((job / "permutations.json").read_text())
    want = expected_masks(pretrained, "groups")
    for name, perm in perms.items():
        kernel = model.get_layer(name).kernel.numpy()
        assert_exact_1xn(kernel, 4, 0.5, perm=np.array(perm))
        np.testing.assert_array_equal(kernel != 0, want[name] != 0, err_msg=name)
    for path in ("config.json", "log.csv", "checkpoints/best.index", "checkpoints/last.index"):
        assert (job / path).exists(), path
    assert list((job / "tensorboard").rglob("events.out.tfevents.*"))

    evaluated = subprocess.run([sys.executable, "-m", "training.evaluate", str(job), "--json", str(tmp_path / "e.json")],
                               capture_output=True, text=True, timeout=300, cwd=ROOT, env=ENV)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["examples"] == 32
    assert result["top1"] == pytest.approx(results["best"]["top1"], abs=1e-6)


def wait_for_first_epoch(proc, job, timeout=600):
    """Until the running job has logged an epoch; it must still be running then."""
    log = job / "log.csv"
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and len(log.read_text().strip().splitlines()) >= 2:  # header + epoch 0
            break
        time.sleep(0.05)
    assert proc.poll() is None, "training ended before it could be stopped"


def test_ctrl_c_says_the_job_can_be_resumed_and_keeps_it_resumable(tmp_path, folder):
    job = tmp_path / "job"
    args = [*SMALL, "--data-dir", str(folder), "--epochs", "50", "--train-batch-size", "16", "--job-dir", str(job)]
    proc = subprocess.Popen([sys.executable, "-m", "training", *args], cwd=ROOT, env=ENV, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=sigint_default)
    wait_for_first_epoch(proc, job)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    ours = [line for line in err.splitlines() if line.startswith("onexn-train: ")]
    assert ours == [f"onexn-train: interrupted; continue the job with --resume --job-dir {job} (from its last "
                    "completed epoch)"], err[-2000:]
    assert jobs.has_backup(job) and not jobs.is_finished(job)
    refused = train(*args)
    assert refused.returncode == 2 and "pass --resume to continue it" in refused.stderr


def test_sigkill_then_resume_continues_from_the_last_completed_epoch(tmp_path, pretrained):
    root = tmp_path / "data"
    write_dataset(root, classes=4, size=40, train=320, val=32)
    job = tmp_path / "job"
    args = [*SMALL, "--data-dir", str(root), "--pretrained-model", str(pretrained), "--epochs", "6",
            "--train-batch-size", "16", "--rearrange", "groups", "--job-dir", str(job)]
    proc = subprocess.Popen([sys.executable, "-m", "training", *args], cwd=ROOT, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = job / "log.csv"
    wait_for_first_epoch(proc, job)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(log.read_text().strip().splitlines()) - 1
    assert 1 <= done_before < 6 and not (job / "results.json").exists()

    refused = train(*args)  # without --resume the started job is refused
    assert refused.returncode == 2 and "pass --resume" in refused.stderr

    resumed = train(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    first_epoch = int(next(l for l in resumed.stdout.splitlines() if l.startswith("Epoch ")).split()[1].split("/")[0])
    assert first_epoch == done_before + 1 > 1, resumed.stdout[:500]  # Keras counts epochs from 1
    results = json.loads((job / "results.json").read_text())
    assert [e["epoch"] for e in results["epochs"]] == list(range(6))
    model = keras.models.load_model(job / "model.keras")
    want = expected_masks(pretrained, "groups")
    for name, mask in want.items():  # the one-shot masks from before the kill, not recomputed
        np.testing.assert_array_equal(model.get_layer(name).kernel.numpy() != 0, mask != 0, err_msg=name)


def test_mirrored_strategy_over_two_logical_cpus(folder, tmp_path):
    job = tmp_path / "job"
    proc = train(*SMALL, "--data-dir", str(folder), "--epochs", "1", "--train-batch-size", "16",
                 "--strategy", "mirrored", "--logical-cpus", "2", "--schedule", "gradual",
                 "--pruning-end-epoch", "1", "--pruning-frequency", "1", "--job-dir", str(job))
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((job / "results.json").read_text())
    assert (results["strategy"], results["replicas"]) == ("MirroredStrategy", 2)
    assert len(results["layers"]) == 13 and all(layer["exact"] for layer in results["layers"])


@pytest.mark.parametrize("case", ["missing_dir", "empty_dir", "unknown_tfds", "missing_pretrained", "batch",
                                  "n_wrap", "tfds_unprepared", "pr_unknown", "pr_unprunable", "resume_nothing"])
def test_bad_input_is_one_clear_line(case, folder, tmp_path):
    def rates_file(rates):
        path = tmp_path / f"rates_{len(list(tmp_path.glob('rates_*')))}.json"
        path.write_text(json.dumps(rates))
        return path

    empty = tmp_path / "empty"
    (empty / "train" / "a").mkdir(parents=True)
    (empty / "val" / "a").mkdir(parents=True)
    base = [*SMALL, "--epochs", "1", "--job-dir", str(tmp_path / "job")]
    args, message = {
        "missing_dir": (["--data-dir", str(tmp_path / "nope")], "is not a directory"),
        "empty_dir": (["--data-dir", str(empty)], "holds no images in class subfolders"),
        "unknown_tfds": (["--dataset", "no_such_dataset_xyz"], "'no_such_dataset_xyz' is not a tensorflow-datasets"),
        "missing_pretrained": (["--data-dir", str(folder), "--pretrained-model", str(tmp_path / "x.h5")],
                               "no such file or directory"),
        "batch": (["--data-dir", str(folder), "--train-batch-size", "0"], "--train-batch-size=0 is not allowed"),
        "n_wrap": (["--data-dir", str(folder), "--N", "3", "--partial", "wrap"],
                   "partial='wrap' needs C_in*C_out divisible by N"),
        "tfds_unprepared": (["--dataset", "mnist", "--data-dir", str(tmp_path / "tfds")],
                            "tfds dataset 'mnist' is not prepared in --data-dir"),
        "pr_unknown": (["--data-dir", str(folder), "--pr-config", str(rates_file({"conv_pw_1": 0.5, "fc9": 0.5}))],
                       "--pr-config names layers that are not in the model: ['fc9']"),
        "pr_unprunable": (["--data-dir", str(folder), "--pr-config", str(rates_file({"conv_dw_1": 0.5}))],
                          "--pr-config: layer 'conv_dw_1' (DepthwiseConv2D) is not prunable"),
        "resume_nothing": (["--data-dir", str(folder), "--resume", "--job-dir", str(tmp_path / "job")],
                           "holds no onexn-train run (no config.json): nothing to resume"),
    }[case]
    proc = train(*base, *args, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("onexn-train: error:")]
    assert len(errors) == 1 and message in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "job" / "results.json").exists() and not (tmp_path / "job" / "config.json").exists()


def test_an_n_taller_than_the_layers_is_said_once(capsys):
    from training import fit_job

    model = onexn_tf.prune_1xn(models.build("mobilenet_v1", alpha=0.25, input_shape=(32, 32, 3), classes=4),
                               n=512, sparsity=0.5)
    fit_job.warn_oversized_n(model, 512)
    err = capsys.readouterr().err.splitlines()
    assert err == ["onexn-train: warning: --N 512: every pruned layer has fewer output channels (e.g. conv_pw_1: 16); "
                   "their blocks cover all output channels of an input channel"]
    fit_job.warn_oversized_n(model, 64)
    assert "--N 64: 3 of 13 pruned layers have fewer output channels" in capsys.readouterr().err


def test_topk_on_a_hand_built_case():
    scores = np.array([[0.1, 0.5, 0.2, 0.05, 0.05, 0.1],   # label 1: nothing higher -> hit for every k
                       [0.3, 0.1, 0.2, 0.25, 0.05, 0.1],   # label 2: 2 higher -> hit for k >= 3
                       [0.2, 0.2, 0.2, 0.2, 0.1, 0.1],     # label 5: 4 higher -> hit for k = 5 only
                       [0.5, 0.1, 0.1, 0.1, 0.1, 0.1],     # label 3: 1 higher, ties with 4 -> hit for k >= 2
                       [0.3, 0.25, 0.2, 0.15, 0.06, 0.04]])  # label 5: 5 higher -> never
    labels = np.array([1, 2, 5, 3, 5])
    assert [topk_hits(scores, labels, k) for k in (1, 2, 3, 5)] == [1, 2, 3, 4]
    keras_top5 = keras.metrics.TopKCategoricalAccuracy(k=5)
    keras_top5.update_state(tf.one_hot(labels, 6), scores)
    assert float(keras_top5.result()) == pytest.approx(4 / 5)


@pytest.mark.parametrize("policy", recipe.LR_POLICIES)
def test_lr_policies_match_the_reference(policy):
    epochs, per_epoch, base = 12, 7, 0.01
    schedule = recipe.ReferenceLR(base, policy, epochs, per_epoch, warmup_epochs=5, decay_epochs=(6, 9), gamma=0.1)

    def reference(epoch, step):  # the seed's adjust_learning_rate, with 'step' at decay epochs 6 and 9
        if policy == "step":
            lr = base * 0.1 ** sum(epoch >= e for e in (6, 9))
        elif policy == "cos":
            lr = 0.5 * base * (1 + math.cos(math.pi * (epoch - 5) / (epochs - 5)))
        elif policy == "exp":
            lr = base * 0.96 ** epoch
        else:
            lr = base
        if epoch < 5:
            lr = lr * float(1 + step + epoch * per_epoch) / (5.0 * per_epoch)
        return lr

    for global_step in range(epochs * per_epoch):
        want = reference(global_step // per_epoch, global_step % per_epoch)
        assert float(schedule(global_step)) == pytest.approx(want, rel=1e-5, abs=1e-9)


def test_torch_sgd_matches_pytorch_update_rule():
    w0 = np.array([[1.0, -2.0], [0.5, 3.0]], np.float32)
    variable = tf.Variable(w0)
    optimizer = recipe.TorchSGD(learning_rate=0.1, momentum=0.9, l2_decay=0.01)
    grads = [np.array([[0.1, 0.2], [0.3, -0.4]], np.float32), np.array([[-0.5, 0.1], [0.0, 0.2]], np.float32)]
    w, buf = w0.copy(), np.zeros_like(w0)
    for g in grads:
        optimizer.apply_gradients([(tf.constant(g), variable)])
        g = g + 0.01 * w
        buf = 0.9 * buf + g
        w = w - 0.1 * buf
    np.testing.assert_allclose(variable.numpy(), w, rtol=1e-6)


def test_transforms_and_pipeline():
    image = tf.constant(np.random.default_rng(0).integers(0, 255, (50, 80, 3)), tf.uint8)
    crop = transforms.eval_transform(image, 32)
    assert crop.shape == (32, 32, 3)
    # Shorter side 50 -> 37 (= round(32·256/224)), longer 80 -> 59; the crop is the centre.
    resized = tf.image.resize(image, (37, 59), antialias=True)
    np.testing.assert_allclose(crop.numpy(), resized.numpy()[2:34, 13:45], atol=1e-4)
    assert transforms.train_transform(image, 24).shape == (24, 24, 3)
    ds = tf.data.Dataset.from_tensor_slices((tf.stack([image] * 5), tf.constant([0, 1, 2, 1, 0])))
    batches = list(data.pipeline(ds, size=16, training=True, batch_size=2, preprocess=lambda x: x / 255.0,
                                 num_classes=3, examples=5))
    assert [b[0].shape[0] for b in batches] == [2, 2, 1]
    assert batches[0][1].shape == (2, 3) and float(tf.reduce_max(batches[0][0])) <= 1.0


def _free_ports(count):
    import socket

    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_multiworker_strategy_with_two_local_workers(folder, tmp_path):
    job = tmp_path / "job"
    workers = [f"localhost:{port}" for port in _free_ports(2)]
    args = [*SMALL, "--data-dir", str(folder), "--epochs", "1", "--train-batch-size", "16",
            "--strategy", "multiworker", "--job-dir", str(job)]
    procs = []
    for index in (1, 0):
        tf_config = json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})
        procs.append(subprocess.Popen([sys.executable, "-m", "training", *args], cwd=ROOT,
                                      env={**ENV, "TF_CONFIG": tf_config}, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    outputs = [proc.communicate(timeout=600) for proc in procs]
    assert all(proc.returncode == 0 for proc in procs), [err[-2000:] for _, err in outputs]
    results = json.loads((job / "results.json").read_text())
    assert (results["strategy"], results["replicas"]) == ("CollectiveAllReduceStrategy", 2)
    assert all(layer["exact"] for layer in results["layers"])


def test_a_tfds_dataset_by_name(tmp_path):
    """The by-name path (builder lookup, download_and_prepare, split choice) on a real, tiny tfds
    dataset generated locally (the machine has no internet for the public ones)."""
    import tensorflow_datasets as tfds
    from training.synthetic import make_images

    class OnexnToyGratings(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self, supervised_keys=("image", "label"),
                features=tfds.features.FeaturesDict({"image": tfds.features.Image(shape=(None, None, 3)),
                                                     "label": tfds.features.ClassLabel(num_classes=3)}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(12, 0), "test": self._generate_examples(6, 1)}

        def _generate_examples(self, count, seed):
            images, labels = make_images(count, classes=3, size=36, seed=seed)
            for i in range(count):
                yield i, {"image": images[i], "label": int(labels[i])}

    splits = data.load(dataset="onexn_toy_gratings", data_dir=str(tmp_path), size=32, batch_size=4,
                       preprocess=onexn_tf.models.preprocess_input("mobilenet_v2"), seed=0)
    assert (splits.num_classes, splits.train_examples, splits.val_examples) == (3, 12, 6)  # 'test' as validation
    images, labels = next(iter(splits.train))
    assert images.shape == (4, 32, 32, 3) and labels.shape == (4, 3)
    assert -1.0 <= float(tf.reduce_min(images)) and float(tf.reduce_max(images)) <= 1.0
    with pytest.raises(data.UsageError, match="no validation split 'holdout'"):
        data.load(dataset="onexn_toy_gratings", data_dir=str(tmp_path), size=32, batch_size=4, val_split="holdout",
                  preprocess=onexn_tf.models.preprocess_input("mobilenet_v2"))
