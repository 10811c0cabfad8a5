"""LSQ-ML: least-squares maximum-likelihood ptychography in mini-batches (the ``LSQML`` engine).

Odstrčil, Menzel & Guizar-Sicairos, Opt. Express 26, 3108 (2018), doi:10.1364/OE.26.003108.

Modules: :mod:`.engine` (the engine: batches, directions, updates, MPI sums, records),
:mod:`.batch` (the numpy passes over one pod group's frames of a batch), :mod:`.steps` (the closed-form
exit-wave and per-frame object/probe steps), :mod:`.positions` (gradient position correction),
:mod:`.variable` (a variable probe: eigen-probes and per-frame weights), :mod:`.multislice` (multislice objects).
"""

from .engine import LSQML, NOISE_MODELS
from .steps import exit_factor, exit_step, frame_steps

__all__ = ["LSQML", "NOISE_MODELS", "exit_factor", "exit_step", "frame_steps"]
