"""``PtydScan``: PtyPy prepared data (``.ptyd``) files.

Geometry (energy, distance, detector pixel size) comes from the file's
``/meta`` and can be overridden in the configuration. The frames of a
``.ptyd`` file are already cropped and centred (PtyPy convention): the file's
``/meta/center`` (else the frame centre) is used as the diffraction centre,
so the default pipeline leaves them as they are. Positions are in metres,
(y, x). Weights become the mask (weight > 0 is valid). A file written by
``ptycli simulate`` records its propagation in ``/meta/propagation``; the
scan's ``propagation`` must then agree with it (or be left unset).

Example configuration::

    scans:
      siemens:
        data:
          name: PtydScan
          dfile: siemens.ptyd
"""

import numpy as np

from ..io.ptyd import read_ptyd_frames, read_ptyd_meta
from .base import ScanLoader, file_meta, register
from .settings import loader_params

__all__ = ["PtydScan"]


@register
class PtydScan(ScanLoader):
    """Loader of PtyPy ``.ptyd`` prepared-data files."""

    NAME = "PtydScan"
    HDF5_SIGNATURE = ("chunks",)
    PARAMS = loader_params("PtydScan", "PtyPy prepared-data file (.ptyd) to read", [
    ], doc="PtyPy prepared data (.ptyd): centred frames, weights, positions in metres")

    def read_meta(self):
        path = self.require_dfile()
        m = read_ptyd_meta(path, with_info=False)
        h, w = m["frame_shape"]
        center = m["center"]
        if center is None:
            center = np.array([h // 2, w // 2], dtype=float)
        return file_meta(m, center=center, label=m["label"], propagation=m.get("propagation"), meta={
            "format": "ptyd",
            "ptyd_version": m["version"],
            "ptyd_num_frames": m["num_frames_meta"],
            "ptyd_chunks": [list(c) for c in m["chunks"]],
        })

    def read_frames(self, start, stop):
        got = read_ptyd_frames(self.require_dfile(), start, stop)
        return {"data": got["data"], "positions": got["positions"], "mask": got["mask"]}
