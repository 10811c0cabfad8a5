"""The resume check: does a checkpoint's configuration fit this one?

A checkpoint serves only a configuration that agrees with the one that wrote
it on the settings that fix the shapes of the model (:data:`RESUME_KEYS`);
:func:`check_resume` names the first one that differs.
"""

from ..errors import ConfigError
from ..utils.param_tree import Param
from .declare import describe_value
from .yamlio import to_plain

__all__ = ["RESUME_KEYS", "check_resume"]


#: Scan settings that fix the shapes of the model (object, probe, exit waves): a checkpoint
#: serves only a configuration that agrees with the one that wrote it on these.
RESUME_KEYS = ("name", "propagation", "data.name", "data.shape", "data.rebin", "data.num_frames",
               "data.orientation", "coherence.num_probe_modes", "coherence.num_object_modes",
               "probe_share", "object_share", "sample.slices", "illumination.variable_modes")


def check_resume(p, saved, where="--resume", probes=None):
    """Refuse a checkpoint written with other scans than validated tree ``p`` has, before any data is read.

    Compares the scan labels and, per scan, the settings of :data:`RESUME_KEYS`
    with the parameters stored in the checkpoint (``saved``: its resolved
    tree; nothing is checked when it holds none). ``data.shape`` and
    ``data.num_frames`` are compared only where both set them (null takes
    the value from the data, known only after reading it); a configured
    ``data.shape`` is also compared with the frame shape of the checkpoint's
    probe (``probes``: storage ID ``S<label>`` -> array, when given).

    Raises
    ------
    ConfigError
        Naming the first key that differs, with both values.
    """
    old_scans = (saved or {}).get("scans") if isinstance(saved, dict) else None
    if not old_scans or not isinstance(old_scans, dict):
        return
    fix = "resume with the configuration that wrote the checkpoint, or start afresh without --resume"
    new_scans = p.get("scans") or {}
    if list(old_scans) != list(new_scans):
        raise ConfigError("%s: the checkpoint holds scans %s, the configuration %s" % (
            where, ", ".join(map(str, old_scans)) or "none", ", ".join(map(str, new_scans)) or "none"), hint=fix)
    for label, scan in new_scans.items():
        old = Param(old_scans[label]) if isinstance(old_scans[label], dict) else Param()
        for key in RESUME_KEYS:
            a, b = to_plain(old.get(key)), to_plain(scan.get(key))
            if key == "sample.slices" and a is None:
                a = 1  # written before multislice objects existed
            if key == "illumination.variable_modes" and a is None:
                a = 0  # written before variable probes existed
            if key in ("propagation", "data.shape", "data.num_frames", "data.orientation") and (a is None or b is None):
                continue
            if isinstance(a, (int, float)) and not isinstance(a, bool):
                a = [a, a] if key == "data.shape" else a
            if isinstance(b, str) and isinstance(a, str):
                a, b = a.lower(), b.lower()
            if a != b:
                raise ConfigError("%s: scans.%s.%s is %s in the checkpoint but %s in the configuration" % (
                    where, label, key, describe_value(a), describe_value(b)), hint=fix)
        probe = (probes or {}).get("S" + str(scan.get("probe_share") or label))
        shape = to_plain(scan.get("data.shape"))
        if shape is not None and probe is not None and list(getattr(probe, "shape", ())[-2:]) != list(shape):
            raise ConfigError("%s: the checkpoint holds frames of %s pixels for scan %s, the configuration asks for "
                              "scans.%s.data.shape %s" % (where, "x".join(str(v) for v in probe.shape[-2:]), label,
                                                           label, describe_value(shape)), hint=fix)
