"""Which engines model which scan options: multislice objects and variable probes.

Some scan options change the model so much that only some engines can
reconstruct it. Each such option is one :class:`Capability`: the class
attribute an engine sets to say it models the option, the scan setting that
asks for it, and the words of the refusal. A chain that runs an engine
without the capability on a scan that asks for it is refused, in one line
naming the engines that can, both when the configuration is validated
(:func:`check_engines`) and when an engine starts from Python
(:func:`refusal`, called by :meth:`ptycli.engines.base.Engine.initialize`).
"""

import dataclasses

from ..errors import ConfigError
from .registry import ENGINES

__all__ = ["Capability", "CAPABILITIES", "capable_engines", "refusal", "check_engines"]


@dataclasses.dataclass(frozen=True)
class Capability:
    """A scan option only some engines model.

    Attributes
    ----------
    attribute : str
        Engine class attribute that is True when the engine models it.
    setting : str
        The scan setting that asks for it (below ``scans.<label>.``).
    does_not : str
        What an engine without it does not do (``"%s does not ..."``).
    off : str
        The setting's value that turns the option off.
    """

    attribute: str
    setting: str
    does_not: str
    off: str

    def requested(self, scan):
        """The setting's value in a validated scan tree when it asks for the option, else 0."""
        group, key = self.setting.split(".")
        value = int((scan.get(group) or {}).get(key) or 0)
        return value if value > int(self.off.split(": ")[1]) else 0


#: the capabilities, by engine class attribute
CAPABILITIES = {
    "MULTISLICE": Capability("MULTISLICE", "sample.slices", "model multislice objects", "sample.slices: 1"),
    "VARIABLE_PROBE": Capability("VARIABLE_PROBE", "illumination.variable_modes", "reconstruct a variable probe",
                                 "variable_modes: 0"),
}


def capable_engines(attribute):
    """Names of the registered engines whose class sets ``attribute`` (e.g. ``'MULTISLICE'``)."""
    return [n for n in ENGINES.names() if getattr(ENGINES.find(n).factory, attribute, False)]


def refusal(attribute, label, name, scan, value):
    """The ConfigError for engine ``label`` (class ``name``) on scan ``scan`` whose setting has ``value``."""
    cap = CAPABILITIES[attribute]
    names = capable_engines(attribute)
    return ConfigError("engines.%s: %s does not %s (scans.%s.%s: %d); use %s, or %s" % (
        label, name, cap.does_not, scan, cap.setting, value,
        " or ".join(names) if names else "another engine", cap.off))


def check_engines(p):
    """Refuse, in a validated tree ``p``, engines lacking a capability one of the scans asks for."""
    scans = p.get("scans") or {}
    for attribute, cap in CAPABILITIES.items():
        asking = [(label, cap.requested(sc)) for label, sc in scans.items() if cap.requested(sc)]
        if not asking:
            continue
        for label, sub in (p.get("engines") or {}).items():
            entry = ENGINES.find(str(sub.get("name")))
            if entry is not None and not getattr(entry.factory, attribute, False):
                raise refusal(attribute, label, entry.name, *asking[0])
