"""Shared test settings: quick mode on, plots off-screen, a private tokenizer cache."""

import os

import matplotlib

matplotlib.use("Agg")
os.environ.setdefault("TL_QUICK", "1")
