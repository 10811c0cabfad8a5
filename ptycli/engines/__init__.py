"""Reconstruction engines.

Importing this package registers every engine that is installed: the base
(:mod:`.base`), the projection engines DM and RAAR (:mod:`.projectional`)
and, when present, ePIE/rPIE (:mod:`.stochastic`), ML (:mod:`.ml`), LSQML (:mod:`.lsqml`) and
position refinement (:mod:`.posref`).

Public API: :class:`Engine`, :func:`register`, :func:`make_engine`,
:data:`ENGINES`, :class:`AddressBook`, :class:`PodGroup`.

Layout
------
========================  ===============================================================
engine base               :mod:`.base` (life cycle, registry), :mod:`.error_sums`,
                          :mod:`.constraints` (shared with ML), :mod:`.snapshot`
                          (good state, divergence, checkpoint state), :mod:`.health`
addressing                :mod:`.addressing` (pods compiled into integer arrays)
DM, RAAR                  :mod:`.projectional` (the algorithm), :mod:`.projection_passes`
                          (its passes: numpy and compiled)
ePIE, rPIE                :mod:`.stochastic` (engines, MPI merge), :mod:`.pie_sweep`,
                          :mod:`.pie_step` (the frame step)
ML                        :mod:`.ml`
LSQML                     :mod:`.lsqml` (mini-batch least-squares maximum likelihood)
position refinement       :mod:`.posref`
numpy kernels             :mod:`.kernels`
compiled kernels (numba)  :mod:`.fused` (projection), :mod:`.fused_ml`, :mod:`.fused_pie`
threads                   :mod:`.threads` (the block thread pool of the compiled passes)
========================  ===============================================================

Comparisons with a ground truth are :mod:`ptycli.quality` (``ptycli.engines.metrics`` is
its old name).
"""

import importlib
import logging

from .addressing import AddressBook, PodGroup, compile_pods
from .base import ENGINES, Engine, ErrorSums, make_engine, register
from . import projectional  # noqa: F401  (registers DM, RAAR)

__all__ = ["Engine", "ErrorSums", "ENGINES", "register", "make_engine", "AddressBook", "PodGroup",
           "compile_pods"]

_log = logging.getLogger("ptycli.engines")

#: submodules that register no engine (the compiled kernels, imported with numba by the engines
#: that run them): :func:`ptycli.params.registry.load_plugins` leaves them alone
NOT_PLUGINS = ("fused", "fused_ml", "fused_pie", "kernels", "metrics", "health", "addressing", "threads",
               "constraints", "error_sums", "snapshot", "projection_passes", "pie_step", "pie_sweep")

for _name in ("stochastic", "ml", "lsqml", "posref"):
    try:
        importlib.import_module("%s.%s" % (__name__, _name))
    except ModuleNotFoundError as _exc:  # not written yet / not installed
        if _exc.name != "%s.%s" % (__name__, _name):
            _log.warning("could not import ptycli.engines.%s: %s", _name, _exc)
    except Exception as _exc:  # a broken module must not break the others
        _log.warning("could not import ptycli.engines.%s: %s: %s", _name, type(_exc).__name__, _exc)
