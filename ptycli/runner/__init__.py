"""Running a reconstruction: the library side of ``ptycli reconstruct``.

* :mod:`ptycli.runner.job`: :class:`Job`, one run of a validated tree step
  by step (plan and check the files, build and restore the model, write the
  result), with :func:`check_inputs`, :func:`provenance` and :func:`write_cxi`;
* :mod:`ptycli.runner.chain`: :class:`ChainRunner`, the engines in order with
  checkpoints, stop on signal (:class:`Stopped`) and the progress bar;
* :mod:`ptycli.runner.signals`: SIGINT/SIGTERM handlers and exit codes.

The output planning and checks live in :mod:`ptycli.io.outputs`.
"""

from .chain import ERROR_KEYS, ChainRunner, Stopped, final_errors
from .job import Job, check_inputs, near_field, provenance, write_cxi
from .signals import EXIT_TERMINATED, SIGNAL_EXIT, exit_code

__all__ = ["Job", "ChainRunner", "Stopped", "check_inputs", "near_field", "provenance", "write_cxi", "final_errors",
           "ERROR_KEYS", "EXIT_TERMINATED", "SIGNAL_EXIT", "exit_code"]
