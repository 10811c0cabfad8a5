"""``CxiScan``: ptychography data in CXI files (cxidb.org).

Reads ``/entry_1/data_1/data`` (or ``instrument_1/detector_1/data``), the
translations ``(N, 3)`` in x, y, z order (turned into (y, x) positions in
metres: column 1 is y, column 0 is x; no sign change, use ``positions_flip``
if the stage moved the other way), the detector ``mask`` (a pixel with any of
``mask_bits`` set is invalid; bit 0x1 = invalid by default), the energy in
joules (converted to keV), the distance and the pixel sizes. Configuration
values of energy/distance/psize override the file's.

In a configuration: ``scans.<label>.data: {name: CxiScan, dfile: scan.cxi}``.
"""

from ..io.cxi import MASK_INVALID, read_cxi_frames, read_cxi_meta
from ..params.declare import Parameter
from .base import ScanLoader, file_meta, register
from .settings import loader_params

__all__ = ["CxiScan"]


@register
class CxiScan(ScanLoader):
    """Loader of CXI ptychography data files."""

    NAME = "CxiScan"
    HDF5_SIGNATURE = ("entry_1",)
    PARAMS = loader_params("CxiScan", "CXI file (.cxi) to read", [
        Parameter("entry", None, "str", "entry group to read (null = entry_1)", nullable=True),
        Parameter("mask_bits", MASK_INVALID, "int",
                  "detector mask bits that mark a pixel invalid (1 = 'invalid' only; "
                  "e.g. 0xFF adds saturated, hot, dead, ...)", low=0),
    ], doc="CXI ptychography data: frames, translations (x, y, z), mask bits, SI units")

    def read_meta(self):
        path = self.require_dfile()
        m = read_cxi_meta(path, entry=self.pars.get("entry"))
        return file_meta(m, meta={
            "format": "cxi",
            "cxi_version": m["cxi_version"],
            "data_path": m["data_path"],
            "translation_path": m["translation_path"],
        })

    def read_frames(self, start, stop):
        got = read_cxi_frames(self.require_dfile(), start, stop, entry=self.pars.get("entry"),
                              mask_bits=self.pars.get("mask_bits", MASK_INVALID))
        out = {"data": got["data"], "positions": got["positions"]}
        if got["mask"] is not None:
            out["mask"] = got["mask"]
        return out
