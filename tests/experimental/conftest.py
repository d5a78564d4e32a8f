"""The experimental trainers' tests import `trl.experimental` silenced; tests/experimental/test_package.py checks the
warning itself in a fresh interpreter."""

import os

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
