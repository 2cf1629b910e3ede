"""Our commands print only their own lines: no TensorFlow / absl / CUDA start-up notices.

TensorFlow 2.21 logs through absl before it is initialised, straight to fd 2 (the oneDNN notice on
AVX-512 hosts, the CUDA probe on hosts without a GPU); ``onexn_tf.native_logs`` filters them while
TensorFlow starts. ``TF_ENABLE_ONEDNN_OPTS=1`` makes TensorFlow print its oneDNN notice on any x86
host, so these tests see what an AVX-512 host prints.
"""
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from onexn_tf import native_logs

ROOT = Path(__file__).parents[1]
COMMANDS = sorted((ep.name, ep.value) for ep in metadata.entry_points(group="console_scripts")
                  if ep.name.startswith("onexn-"))
NOISE = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796181104.077203    2143 port.cc:153] oneDNN custom operations are on. You may see slightly "
    "different numerical results due to floating-point round-off errors from different computation orders.",
    "I0000 00:00:1796181104.078433    2143 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will "
    "not be used.",
    "I0000 00:00:1796181118.376885    2165 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use "
    "available CPU instructions in performance-critical operations.",
    "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow with the appropriate "
    "compiler flags.",
    "E0000 00:00:1796181184.842395    2204 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: Failed "
    "call to cuInit: UNKNOWN ERROR (303)",
]
KEPT = [
    "onexn-train: error: --pr-target=1.5 is not allowed",
    "E0000 00:00:1796181184.842395    2204 op_kernel.cc:1830] OP_REQUIRES failed at conv_ops.cc:100 : INVALID_ARGUMENT",
    "F0000 00:00:1796181184.842395    2204 check.cc:12] Check failed: x",
    "Traceback (most recent call last):",
    "/usr/lib/python3/foo.py:3: UserWarning: a warning of Python's own",
]


def test_filter_drops_startup_notices_and_keeps_everything_else():
    text = "".join(line + "\n" for line in NOISE + KEPT)
    assert native_logs.filter_text(text, 2) == "".join(line + "\n" for line in KEPT)
    assert native_logs.filter_text(text, 0) == text  # TF_CPP_MIN_LOG_LEVEL=0: the user asked for all
    level1 = native_logs.filter_text(text, 1).splitlines()
    assert NOISE[0] not in level1 and NOISE[5] not in level1  # INFO and the CUDA probe gone from level 1
    assert [line for line in level1 if line in KEPT] == KEPT
    assert native_logs.filter_text(text, 3).splitlines() == [line for line in KEPT if not line.startswith("E0000")]


def test_quiet_stderr_filters_the_file_descriptor(tmp_path):
    """What native code writes to fd 2 inside the window is filtered; what follows it is not."""
    script = (
        "import os, sys\n"
        "from onexn_tf.native_logs import quiet_stderr\n"
        "with quiet_stderr():\n"
        f"    os.write(2, {(NOISE[1] + chr(10) + KEPT[1] + chr(10)).encode()!r})\n"
        "    print('python line', file=sys.stderr)\n"
        f"os.write(2, {(NOISE[2] + chr(10)).encode()!r})\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    proc = subprocess.run([sys.executable, "-c", "import onexn_tf\n" + script], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == [KEPT[1], "python line", NOISE[2]]


def console(name: str, value: str, *args: str) -> subprocess.Popen:
    module, _, func = value.partition(":")
    code = f"import sys; sys.argv[0] = {name!r}; from {module} import {func} as main; sys.exit(main())"
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT, env=env)


def test_every_command_prints_only_its_own_lines():
    """``--help``: nothing on stderr; an unknown flag: exactly one line, ``PROG: error: ... (see PROG --help)``."""
    assert len(COMMANDS) == 9, COMMANDS  # installed with pip install -e (make test does)
    runs = {(name, flag): console(name, value, flag) for name, value in COMMANDS
            for flag in ("--help", "--no-such-flag")}
    for (name, flag), proc in runs.items():
        out, err = proc.communicate(timeout=300)
        if flag == "--help":
            assert proc.returncode == 0 and out.startswith("usage: ") and err == "", (name, err)
        else:
            lines = err.splitlines()
            assert proc.returncode == 2, (name, err)
            assert len(lines) == 1 and lines[0].startswith(f"{name}: error: "), (name, err)
            assert lines[0].endswith(f"(see {name} --help)"), (name, err)


@pytest.mark.parametrize("level", ["2", None])
def test_tensorflow_start_prints_nothing(level):
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "1"}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    if level:
        env["TF_CPP_MIN_LOG_LEVEL"] = level
    code = "from onexn_tf._keras import tf; print(float(tf.reduce_sum(tf.ones((2, 2)))))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "4.0" and proc.stderr == "", proc.stderr
