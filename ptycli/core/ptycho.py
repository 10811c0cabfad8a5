"""Ptycho: the model builder that turns a parameter tree into a reconstruction model.

Levels (each includes the ones before):

0. validate the parameter tree against the declarations;
1. create the containers ``probe``, ``obj``, ``exit``, ``diff`` and ``mask``;
2. load each scan's frames (only this MPI rank's block), make geometries,
   views and pods, and initialise probe, object and exit waves;
3. run the engine chain (``engines.<label>``, in the order given);
4. save the result (done by the command line's writer).
"""

import logging
import time

import numpy as np

from .. import parallel
from ..errors import ConfigError, DataError
from ..log import _PtycliHandler, setup_logging
from ..params.registry import build_engine
from ..params.tree import engine_sequence, validate
from ..utils.heap import release_freed_memory
from ..utils.param_tree import Param
from .base import Base
from .classes import Container
from .manager import get_scan_model

__all__ = ["Ptycho"]

log = logging.getLogger("ptycli")

_TYPES = {"single": (np.float32, np.complex64), "double": (np.float64, np.complex128)}


class Ptycho(Base):
    """The managing object of a reconstruction.

    Parameters
    ----------
    pars : dict or Param
        The parameter tree (as in a ``config.yaml``); validated and completed
        with the declared defaults into ``self.p``.
    level : int
        How far to build (see the module docstring).

    Attributes
    ----------
    p : Param
        The validated, complete parameter tree.
    probe, obj, exit, diff, mask : Container
        The containers of the model.
    scans : dict
        Scan models by label.
    pods : dict
        All pods by ID.
    FType, CType : numpy types
        Real and complex types (``data_type``: single or double).
    """

    _PREFIX = "Ptycho"

    def __init__(self, pars=None, level=2):
        super().__init__(None, "Ptycho", BeOwner=True)
        self.p = validate(Param(pars or {}))
        self.FType, self.CType = _TYPES[self.p.data_type]
        self.scans = {}
        self.engines = []
        self.runtime = Param(iterations=0, history=[], start_time=time.time())
        self.level = 0
        self._set_logging()
        if level >= 1:
            self.init_structures()
        if level >= 2:
            self.init_data()
        if level >= 3:
            self.run()

    def _set_logging(self):
        """Log at ``verbose_level`` when used as a library.

        The command line configures logging itself (its ``-q``/``-v`` flags win);
        a script that never set up logging gets the ``ptycli`` handler here.
        """
        if not any(isinstance(h, _PtycliHandler) for h in log.handlers):
            setup_logging(verbose_level=self.p.verbose_level)

    @property
    def pods(self):
        """All pods of this model, by ID."""
        return self._pool_of("P")

    def init_structures(self):
        """Level 1: the containers."""
        self.probe = Container(self, "Cprobe", data_type="complex")
        self.obj = Container(self, "Cobj", data_type="complex")
        self.exit = Container(self, "Cexit", data_type="complex")
        self.diff = Container(self, "Cdiff", data_type="real")
        self.mask = Container(self, "Cmask", data_type=np.uint8)  # 1 valid, 0 masked: a byte per pixel
        self.level = 1

    @property
    def containers(self):
        """The five containers by name."""
        return dict(probe=self.probe, obj=self.obj, exit=self.exit, diff=self.diff, mask=self.mask)

    def init_data(self):
        """Level 2: load data, build views and pods, initialise the model."""
        scans = self.p.get("scans") or {}
        if not scans:
            raise ConfigError("scans: no scan given; add one under 'scans:', e.g. scans.MF.data.name: MoonFlowerScan")
        # scans owning a shared probe/object are built first
        order = sorted(scans, key=lambda k: bool(scans[k].get("probe_share") or scans[k].get("object_share")))
        for label in order:
            model = get_scan_model(scans[label].name)(self, label, scans[label])
            model.load()
            model.make_geometry()
            model.build()
            self.scans[label] = model
        for model in self.scans.values():
            model.fit_object()
        for C in (self.probe, self.exit, self.diff, self.mask):
            C.reformat()
        for label in order:
            self.scans[label].init_probe()
            self.scans[label].init_object()
        for model in self.scans.values():
            model.init_exit()
        self._check_finite()
        release_freed_memory()  # the loader's and the probe guess's temporaries (ptycli.utils.heap)
        log.info("model ready: %d pods; %s; %s", len(self.pods), self.probe.info(), self.obj.info())
        self.level = 2

    def _check_finite(self):
        """The initial probe and object must be finite (else every engine diverges at once)."""
        for what, C in (("probe", self.probe), ("object", self.obj)):
            for sid, S in C.S.items():
                if np.isfinite(S.data).all():
                    continue
                label = sid[1:]
                model = self.scans.get(label)
                peak = None
                if model is not None and model.data is not None and model.data.intensities.size:
                    peak = float(np.max(model.data.intensities))
                raise DataError("scans.%s: the initial %s holds NaN/Inf%s" % (
                    label, what, " (the largest count in the frames is %.3g)" % peak if peak is not None else ""),
                    hint="check the frames for absurd values and the %s parameters (scans.%s.%s)" % (
                        what, label, "illumination" if what == "probe" else "sample"))

    def run(self, engines=None):
        """Level 3: run the engine chain (all of ``engines`` in the given order)."""
        for label, epars in (engines or engine_sequence(self.p)):
            engine = build_engine(self, epars, label=label)  # engines are plugins of the registry
            self.engines.append(engine)
            engine.run()
        self.level = 3
        return self

    @property
    def rank(self):
        return parallel.rank
