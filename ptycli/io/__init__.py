"""File input/output, one module per file kind or concern.

* ptycli's own files: :mod:`~ptycli.io.reconstruction` (results and
  checkpoints; their history and health columns in :mod:`~ptycli.io.history`,
  nested trees and attributes in :mod:`~ptycli.io.h5tree`),
  :mod:`~ptycli.io.checkpoint` (a model to and from those files),
  :mod:`~ptycli.io.datafile` (data files);
* foreign files: :mod:`~ptycli.io.ptyd` (PtyPy), :mod:`~ptycli.io.cxi`;
* writing safely: :mod:`~ptycli.io.atomic` (atomic writes, locks),
  :mod:`~ptycli.io.outputs` (every file a run writes, checked before it starts);
* reading safely: :mod:`~ptycli.io.reading`, :mod:`~ptycli.io.hdf5`,
  :mod:`~ptycli.io.h5guard`, :mod:`~ptycli.io.h5text`.

h5py is imported inside the functions that use it.
"""

from .atomic import atomic_write, check_writable
from .reconstruction import load_reconstruction

__all__ = ["atomic_write", "check_writable", "load_reconstruction"]
