"""``python -m export`` is ``onexn-export``."""
import sys

from export.cli import run

sys.exit(run())
