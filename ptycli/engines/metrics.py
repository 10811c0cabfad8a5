"""Old import path of :mod:`ptycli.quality` (comparisons with a ground truth are no engine concept).

Kept because scripts and tests written before the move import
``ptycli.engines.metrics``; new code imports :mod:`ptycli.quality`.
"""

from ..quality import *  # noqa: F401,F403
from ..quality import __all__  # noqa: F401
