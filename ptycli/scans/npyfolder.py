"""``NpyFolderScan``: a folder of ``.npy`` frames with text geometry and positions.

This is the layout the PtyPy tutorial "Modeling the experiment" stores::

    sim/
      geometry.txt      distance 1.5000e-01      (m, sample-detector)
                        energy 6.2000e+00        (keV)
                        psize 2.4000e-05         (m, detector pixel; one or two values)
                        shape 256                (frame shape; one or two values)
      positions.txt     ccd/diffraction_0000.npy 1.2000e-04 -3.4000e-04
                        ...                      (frame file, y, x in m; one line per frame)
      ccd/diffraction_0000.npy ...

``dfile`` names the folder. Empty lines and lines starting with ``#`` are
skipped; unknown geometry keys are ignored; geometry keys may be missing when
the configuration gives ``energy``/``distance``/``psize``. Frame files are
relative to the folder, 2-D (or with leading length-1 axes), any numeric dtype.
"""

import os

import numpy as np

from ..errors import DataError
from ..log import get_logger
from ..params.declare import Parameter
from .base import ScanLoader, register
from .settings import loader_params

__all__ = ["NpyFolderScan", "read_geometry_txt", "read_positions_txt"]

logger = get_logger("ptycli.scans.npyfolder")

_GEOMETRY_KEYS = {"distance": (1, float), "energy": (1, float), "psize": (2, float),
                  "shape": (2, int)}


def _lines(path):
    """Yield (line number, tokens) of the meaningful lines of a text file."""
    try:
        with open(path, "r", encoding="utf-8") as fh:
            text = fh.read()
    except UnicodeDecodeError as exc:
        raise DataError("%s is not a text file (%s)" % (path, exc)) from exc
    except OSError as exc:
        raise DataError("cannot read %s (%s)" % (path, exc.strerror or exc)) from exc
    for num, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if line:
            yield num, line.split()


def read_geometry_txt(path):
    """Parse a ``geometry.txt``: dict with any of distance, energy, psize (2,), shape (2,)."""
    out = {}
    for num, tokens in _lines(path):
        key = tokens[0].lower()
        if key not in _GEOMETRY_KEYS:
            logger.debug("%s line %d: unknown key %r ignored", path, num, tokens[0])
            continue
        most, conv = _GEOMETRY_KEYS[key]
        values = tokens[1:]
        if not 1 <= len(values) <= most:
            raise DataError("%s line %d: expected '%s' and %s, got %r" % (
                path, num, key, "one value" if most == 1 else "one or two values",
                " ".join(tokens)))
        try:
            nums = [float(v) for v in values]
        except ValueError:
            raise DataError("%s line %d: %r is not a number" % (
                path, num, " ".join(values))) from None
        if conv is int:
            if any(v != int(v) for v in nums):
                raise DataError("%s line %d: %s must be whole numbers, got %r" % (
                    path, num, key, " ".join(values)))
            nums = [int(v) for v in nums]
        if not all(np.isfinite(v) and v > 0 for v in nums):
            raise DataError("%s line %d: %s must be positive, got %r" % (
                path, num, key, " ".join(values)))
        out[key] = nums[0] if most == 1 else tuple(nums * (2 // len(nums)))
    return out


def read_positions_txt(path):
    """Parse a ``positions.txt``: (list of frame file names, (N, 2) float64 y, x)."""
    files, pos = [], []
    for num, tokens in _lines(path):
        if len(tokens) != 3:
            raise DataError("%s line %d: expected 'frame_file y x', got %r" % (
                path, num, " ".join(tokens)))
        try:
            y, x = float(tokens[1]), float(tokens[2])
        except ValueError:
            raise DataError("%s line %d: positions %r are not numbers" % (
                path, num, " ".join(tokens[1:]))) from None
        files.append(tokens[0])
        pos.append((y, x))
    if not files:
        raise DataError("%s lists no frames" % path,
                        hint="write one line 'frame_file y x' per frame")
    return files, np.array(pos, dtype=np.float64).reshape(-1, 2)


@register
class NpyFolderScan(ScanLoader):
    """A folder of ``.npy`` frames with ``geometry.txt`` and ``positions.txt``."""

    NAME = "NpyFolderScan"
    READS_FOLDER = True
    PARAMS = loader_params("NpyFolderScan", "the folder holding geometry.txt, positions.txt and the frames", [
        Parameter("geometry_file", "geometry.txt", "str",
                  "geometry file in the folder ('' = none: give energy, distance, psize)"),
        Parameter("positions_file", "positions.txt", "str",
                  "file listing 'frame_file y x' per line, in the folder"),
    ], doc="frames from a folder of .npy files")

    def __init__(self, pars=None, path=None):
        super().__init__(pars, path)
        self._files = None
        self._positions = None

    def _folder(self):
        folder = self.require_dfile()
        if os.path.isfile(folder):
            name = os.path.basename(folder)
            if name not in (self.pars.positions_file, self.pars.geometry_file):
                raise DataError(
                    "%s: %s is a file, but NpyFolderScan reads a folder holding %s (lines 'frame_file y x'), "
                    "%s and the frames as .npy files" % (
                        self._where("dfile"), folder, self.pars.positions_file,
                        self.pars.geometry_file or "no geometry file"),
                    hint="set dfile to that folder (here perhaps %s), or choose the loader that reads this "
                         "file's format (`ptycli params scans.<label>.data` lists the loaders)"
                         % (os.path.dirname(os.path.abspath(folder))), validation=True)
            folder = os.path.dirname(os.path.abspath(folder))  # dfile named positions.txt or geometry.txt
        return folder

    def _frame(self, folder, name, mmap=False):
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise DataError("frame file %s listed in %s does not exist" % (
                path, self.pars.positions_file), hint="check the file names in %s" % os.path.join(
                    folder, self.pars.positions_file))
        try:
            a = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        except Exception as exc:
            raise DataError("cannot read frame file %s (%s)" % (path, exc),
                            hint="frames must be .npy arrays") from exc
        while a.ndim > 2 and a.shape[0] == 1:
            a = a[0]
        if a.ndim != 2:
            raise DataError("frame file %s holds an array of shape %s, expected a 2-D frame" % (
                path, a.shape))
        return a

    def _index(self):
        if self._files is None:
            folder = self._folder()
            ppath = os.path.join(folder, self.pars.positions_file)
            if not os.path.isfile(ppath):
                raise DataError("%s: positions file %s does not exist" % (
                    self._where("dfile"), ppath),
                    hint="write one line 'frame_file y x' per frame there, or set %s"
                    % self._where("positions_file"), validation=True)
            self._files, self._positions = read_positions_txt(ppath)
        return self._files, self._positions

    def read_meta(self):
        folder = self._folder()
        geo = {}
        if self.pars.geometry_file:
            gpath = os.path.join(folder, self.pars.geometry_file)
            if os.path.isfile(gpath):
                geo = read_geometry_txt(gpath)
            elif not all(self.pars.get(k) is not None for k in ("energy", "distance", "psize")):
                raise DataError("%s: geometry file %s does not exist" % (
                    self._where("dfile"), gpath),
                    hint="write it (lines 'distance 1.5e-01', 'energy 6.2', 'psize 2.4e-05'), "
                    "or give energy, distance and psize in the configuration", validation=True)
        files, positions = self._index()
        first = self._frame(folder, files[0], mmap=True)
        shape = tuple(first.shape)
        if "shape" in geo and tuple(geo["shape"]) != shape:
            raise DataError("%s says shape %s but frame %s has shape %s" % (
                os.path.join(folder, self.pars.geometry_file), geo["shape"][0]
                if geo["shape"][0] == geo["shape"][1] else list(geo["shape"]),
                os.path.join(folder, files[0]), shape),
                hint="fix the shape line of the geometry file")
        return {
            "num_frames": len(files),
            "num_positions": len(files),
            "frame_shape": shape,
            "energy_kev": geo.get("energy"),
            "distance_m": geo.get("distance"),
            "psize_m": geo.get("psize"),
            "positions_unit": "m",
            "label": os.path.basename(os.path.normpath(folder)),
        }

    def read_frames(self, start, stop):
        folder = self._folder()
        files, positions = self._index()
        frames = [self._frame(folder, name) for name in files[start:stop]]
        shape = self.meta()["frame_shape"]
        for name, fr in zip(files[start:stop], frames):
            if fr.shape != shape:
                raise DataError("frame file %s has shape %s, the first frame %s" % (
                    os.path.join(folder, name), fr.shape, shape),
                    hint="all frames must have the same shape")
        return {"data": np.stack(frames), "positions": positions[start:stop]}
