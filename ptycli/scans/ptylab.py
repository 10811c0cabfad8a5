"""``PtyLabScan``: the HDF5 files of PtyLab (conventional ptychography, ``CPM``).

PtyLab (Loetgering et al., Opt. Express 31, 13763 (2023),
doi:10.1364/OE.485370) keeps a scan in one HDF5 file of SI quantities at the
top level:

==================  ===============================================  =====
dataset             what                                             unit
==================  ===============================================  =====
``ptychogram``      frames ``(N, Nd, Nd)``, zero frequency at        counts
                    pixel ``Nd // 2`` (centred FFT)
``encoder``         scan positions ``(N, 2)``, (row, column) =        m
                    (y, x); ``(2, N)`` is read transposed
``wavelength``      illumination wavelength                           m
``zo``              sample-detector distance                          m
``dxd``             detector pixel size                               m
==================  ===============================================  =====

So a PtyLab file needs no mapping::

    scans:
      lab:
        data: {name: PtyLabScan, dfile: simu.hdf5}

It is :class:`~ptycli.scans.hdf5.Hdf5Scan` with PtyLab's dataset names as the
defaults (every one can still be set), the energy from the wavelength and the
diffraction centre at ``Nd // 2`` unless ``center`` says otherwise. PtyLab's
``orientation`` dataset is not read: set ``orientation`` when the frames need
flipping. Fourier-ptychography files (``FPM``: ``zled``, ``magnification``)
are a different experiment (no ``zo``): the loader then asks for the distance.
"""

import numpy as np

from ..params.declare import Parameter
from .base import register
from .hdf5 import Hdf5Scan, _dataset_param

__all__ = ["PtyLabScan", "PTYLAB_PATHS"]

#: PtyLab's dataset names (``None``: PtyLab's files have no such dataset)
PTYLAB_PATHS = {
    "intensities": "/ptychogram",
    "positions": "/encoder",
    "mask": None,
    "indices": None,
    "energy": None,
    "wavelength": "/wavelength",
    "distance": "/zo",
    "psize": "/dxd",
    "center": None,
    "ground_truth": None,
    "label": None,
}


class _TransposedPositions:
    """A ``(2, N)`` positions dataset read as ``(N, 2)`` (what the loader slices and measures)."""

    def __init__(self, ds):
        self.name, self.attrs = ds.name, ds.attrs
        self._values = np.asarray(ds[()], dtype=np.float64).T
        self.shape, self.ndim, self.size = self._values.shape, 2, self._values.size

    def __getitem__(self, index):
        return self._values[index]


@register
class PtyLabScan(Hdf5Scan):
    """PtyLab's HDF5 files (ptychogram, encoder, wavelength, zo, dxd)."""

    NAME = "PtyLabScan"
    HDF5_SIGNATURE = ("ptychogram",)
    PATHS = PTYLAB_PATHS
    PARAMS = Hdf5Scan.PARAMS.extended("PtyLabScan", [
        Parameter("intensities", PTYLAB_PATHS["intensities"], "str", "dataset of the frames, (N, Nd, Nd)"),
        Parameter("positions", PTYLAB_PATHS["positions"], "str", "(N, 2) dataset of (y, x) positions in metres "
                  "(PtyLab's encoder; (2, N) is read transposed)"),
        _dataset_param("wavelength_dataset", "the wavelength (m after the multiplier)", PTYLAB_PATHS["wavelength"]),
        _dataset_param("distance_dataset", "the sample-detector distance (m after the multiplier)",
                       PTYLAB_PATHS["distance"]),
        _dataset_param("psize_dataset", "the detector pixel size (m after the multiplier)", PTYLAB_PATHS["psize"]),
        Parameter("fftshifted", False, "bool",
                  "frames have the zero frequency at pixel [0, 0] (PtyLab stores it at Nd // 2)"),
    ], doc="PtyLab's HDF5 files: ptychogram, encoder, wavelength, zo, dxd")

    def _position_sets(self, f):
        if self.pars.get("positions_slow") or self.pars.get("positions_fast"):
            return super()._position_sets(f)
        ds = self._dataset(f, self.pars.get("positions") or PTYLAB_PATHS["positions"], "positions")
        if ds.ndim == 2 and ds.shape[0] == 2 and ds.shape[1] != 2:
            return [_TransposedPositions(ds)]
        return super()._position_sets(f)

    def read_meta(self):
        meta = super().read_meta()
        if meta.get("center") is None:  # PtyLab's centred FFT: zero frequency at Nd // 2
            meta["center"] = np.array([s // 2 for s in meta["frame_shape"]], dtype=np.float64)
        return meta
