"""Shared test settings: the run report (trl/report.py) is off unless a test turns it on, so that hundreds of tiny
training runs do not each write plots (tests/unit/test_report.py registers it explicitly)."""

import os

os.environ.setdefault("TRL_RUN_REPORT", "0")
