"""Shared test setup: keep it light (no heavy imports here)."""

import os

# Plots render off-screen: no display on CI, no windows popping up locally.
os.environ["MPLBACKEND"] = "Agg"
