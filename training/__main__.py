"""``python -m training`` is ``onexn-train``."""
import sys

from training.train import run

sys.exit(run())
