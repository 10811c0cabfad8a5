"""ptycli: command-line ptychography reconstruction.

The Python API mirrors the classic ptychography data model: ``ptycli.utils``
(``Param`` and array helpers), ``ptycli.core`` (``Container``, ``Storage``,
``View``, ``POD``, ``Geo``, scan patterns) and ``ptycli.resources`` (procedural
test images).
"""

__version__ = "0.1.0"

from . import utils  # noqa: E402,F401
from . import core  # noqa: E402,F401
from . import resources  # noqa: E402,F401
