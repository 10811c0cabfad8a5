"""Parameter trees: declarations, validation, YAML loading.

* :mod:`.declare` -- :class:`Parameter`, :class:`ParamSet` (how options are declared)
* :mod:`.registry` -- loader / engine / scan-model name registries, :func:`load_plugins`
* :mod:`.scan` -- declarations of ``scans.<label>``
* :mod:`.tree` -- top level: :func:`validate`, :func:`defaults`, :func:`describe`,
  :func:`dump_defaults_yaml`, :func:`apply_overrides`, :func:`engine_sequence`
* :mod:`.yamlio` -- :func:`load_config`, :func:`dump_yaml`
"""
from .declare import Parameter, ParamSet  # noqa: F401
from .registry import (  # noqa: F401
    register_loader,
    register_engine,
    register_scan_model,
    get_loader,
    get_engine,
    get_scan_model,
    loaders,
    engines,
    scan_models,
    load_plugins,
)
from .tree import (  # noqa: F401
    validate,
    defaults,
    describe,
    dump_defaults_yaml,
    apply_overrides,
    engine_sequence,
    resolve_run_label,
    result_path,
    checkpoint_path,
)
from .yamlio import load_config, dump_yaml  # noqa: F401
