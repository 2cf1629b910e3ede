"""The pruning wrapper under tf.distribute.MirroredStrategy (two logical CPU devices)."""
import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import expected_pruned_blocks

SCRIPT = Path(__file__).parent / "scripts" / "mirrored_fit.py"


def test_mirrored_strategy_trains_pruned_model():
    # A gradual schedule: several cross-replica mask updates (the one-shot default takes the same path once).
    proc = subprocess.run([sys.executable, str(SCRIPT), "gradual"], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))
    result = json.loads(line[len("RESULT "):])
    assert result["replicas"] == 2
    assert len(result["layers"]) == 14  # 13 pointwise convs + conv_preds (full=True)
    for name, layer in result["layers"].items():
        assert layer["step"] == 6, name  # 48 samples / global batch 8
        assert layer["replicas_agree"], name
        assert layer["mixed"] == 0, name
        assert layer["zero_blocks"] == expected_pruned_blocks(layer["blocks"], 0.5), name
        assert layer["pruned_kernel_weights_are_zero"], name
