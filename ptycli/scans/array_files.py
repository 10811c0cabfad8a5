"""Masks, darks and flats given as files in the configuration (``mask``, ``dark``, ``flat``).

:func:`load_array_file` reads one 2-D or 3-D array from ``.npy``, ``.npz`` or
HDF5 (``file.h5:/dataset`` picks a dataset).
"""

import os

import numpy as np

from ..errors import ConfigError, DataError
from ..io.h5guard import check_structure
from ..io.reading import reading

__all__ = ["load_array_file"]


def load_array_file(path, what, param):
    """Read a 2-D or 3-D array from ``.npy``/``.npz`` or HDF5 (``file.h5:/dataset``)."""
    spec = str(path)
    dataset = None
    if not os.path.exists(spec) and ":" in spec:
        spec, dataset = spec.rsplit(":", 1)
    if not os.path.exists(spec):
        raise ConfigError("%s: %s file %s does not exist" % (param, what, spec),
                          hint="fix the path or set %s to null" % param)
    low = spec.lower()
    try:
        if low.endswith(".npy"):
            return np.load(spec, allow_pickle=False)
        if low.endswith(".npz"):
            with np.load(spec, allow_pickle=False) as z:
                keys = list(z.keys())
                key = dataset or (what if what in keys else keys[0] if len(keys) == 1 else None)
                if key is None or key not in keys:
                    raise ConfigError("%s: %s file %s holds arrays %s; name one as %s:NAME"
                                      % (param, what, spec, ", ".join(keys), spec))
                return z[key]
    except ConfigError:
        raise
    except Exception as exc:
        raise DataError("%s: cannot read %s file %s (%s)" % (param, what, spec, exc)) from exc
    import h5py  # optional heavy package: only for HDF5 files

    check_structure(spec)
    try:
        f = h5py.File(spec, "r")
    except OSError as exc:
        raise DataError("%s: %s file %s is neither .npy nor a readable HDF5 file (%s)" % (
            param, what, spec, exc)) from exc
    with f, reading(spec, "the %s" % what):
        if dataset is None:
            found = []
            f.visititems(lambda n, o: found.append(n) if isinstance(o, h5py.Dataset)
                         and o.ndim in (2, 3) else None)
            for cand in (what, "mask", "data"):
                if cand in found:
                    dataset = cand
                    break
            else:
                if len(found) == 1:
                    dataset = found[0]
                else:
                    raise ConfigError("%s: %s file %s holds %d 2-D/3-D datasets; name one as "
                                      "%s:/path" % (param, what, spec, len(found), spec))
        if dataset not in f or not isinstance(f[dataset], h5py.Dataset):
            raise DataError("%s: %s file %s has no dataset %s" % (param, what, spec, dataset))
        return f[dataset][()]
