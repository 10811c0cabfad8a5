"""``ptycli simulate``: run a scan's loader (usually the MoonFlower simulator) and write a data file."""

import os
import time

import click
import numpy as np

from .. import parallel
from ..core.geometry import set_workers
from ..errors import ConfigError
from ..io.atomic import check_writable
from ..io.cxi import write_cxi_data
from ..io.datafile import write_datafile
from ..io.ptyd import write_ptyd
from ..log import get_logger
from ..params.yamlio import dump_yaml
from ..scans import get_loader
from .common import apply_verbose_level, emit_result, guess_format, load_tree, set_option

logger = get_logger(__name__)


def gather_scan(sd):
    """All ranks' frames of a ScanData on rank 0 (others get None)."""
    if parallel.size == 1:
        return sd
    parts = parallel.gather((sd.intensities, sd.mask, sd.positions, sd.indices))
    if not parallel.master:
        return None
    sd.intensities = np.concatenate([p[0] for p in parts])
    sd.mask = np.concatenate([p[1] for p in parts])
    sd.positions = np.concatenate([p[2] for p in parts])
    sd.indices = np.concatenate([p[3] for p in parts])
    return sd


def positions_in_metres(sd, propagation):
    """Positions of ``sd`` in metres (pixel units converted with the sample pixel size)."""
    if sd.positions_unit == "m":
        return np.asarray(sd.positions, dtype=float)
    psize = np.broadcast_to(np.asarray(sd.psize_m, float), (2,))
    if propagation == "nearfield":
        res = psize
    else:
        res = sd.wavelength_m * sd.distance_m / (np.asarray(sd.shape) * psize)
    return np.asarray(sd.positions, dtype=float) * res


def write_scan(path, fmt, sd, p, label):
    """Write one ScanData (all frames) as ptycli's data file, CXI or PtyPy .ptyd.

    The propagation is the one the loader resolved (``sd.meta['propagation']``:
    the configured one, else the input's, else farfield). ptycli's data file
    records it (``/geometry`` attribute), a ``.ptyd`` in ``/meta/propagation``;
    CXI has no place for it (a near-field CXI file gets a warning).
    """
    propagation = (sd.meta or {}).get("propagation") or p.scans[label].get("propagation") or "farfield"
    sd.meta = dict(sd.meta or {}, propagation=propagation)
    if fmt == "h5":
        write_datafile(path, sd, config_yaml=dump_yaml(p))
    elif fmt == "cxi":
        write_cxi_data(path, sd.intensities, positions_in_metres(sd, propagation), energy_kev=sd.energy_kev,
                       distance_m=sd.distance_m, psize_m=sd.psize_m, mask=sd.mask)
        if propagation != "farfield":
            logger.warning("%s: CXI files do not record the propagation; reconstruct these %s frames with "
                           "scans.%s.propagation: %s", path, propagation, label, propagation)
    elif fmt == "ptyd":
        write_ptyd(path, sd.intensities, positions_in_metres(sd, propagation),
                   weights=np.asarray(sd.mask, dtype=np.float64), energy_kev=sd.energy_kev,
                   distance_m=sd.distance_m, psize_m=sd.psize_m, label=sd.label or label,
                   propagation=propagation)
    else:  # pragma: no cover - click restricts the choice
        raise ConfigError("unknown format %r; valid: h5, cxi, ptyd" % fmt)


@click.command()
@click.argument("config")
@click.option("-o", "--output", default=None, metavar="DATA.h5",
              help="Output data file (default: <io.home>/<run>.h5).")
@click.option("--format", "fmt", type=click.Choice(["h5", "cxi", "ptyd"]), default=None,
              help="File format (default: from the extension; .cxi, .ptyd, else ptycli's HDF5).")
@click.option("--scan", "scan_label", default=None, help="Which scan to write when CONFIG has several.")
@set_option
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON summary on stdout.")
def simulate(config, output, fmt, scan_label, overrides, force, as_json):
    """Simulate (or convert) a scan described in CONFIG and write it as a data file.

    CONFIG is a YAML parameter file ('-' reads standard input). The scan's
    loader runs as in a reconstruction, so any loader works: the MoonFlower
    simulator writes frames plus its ground-truth object and probe; other
    loaders convert their input into ptycli's data file, CXI or .ptyd.
    MoonFlowerScan simulates the scan's propagation (far field unless
    scans.<label>.propagation says nearfield); ptycli's data file and .ptyd
    record it, so a reconstruction of the file needs no propagation setting.

    \b
    Examples:
      ptycli simulate configs/moonflower.yaml -o sim.h5
      ptycli simulate configs/moonflower.yaml --set scans.MF.data.num_frames=50 -o small.cxi
      ptycli simulate configs/moonflower.yaml -o sim.h5 --json | jq .frames
    """
    t0 = time.time()
    p = load_tree(config, overrides, require_scans=True)
    apply_verbose_level(p.verbose_level)
    labels = list(p.scans)
    if scan_label is None:
        if len(labels) > 1:
            raise ConfigError("the config has %d scans (%s); choose one with --scan" % (len(labels), ", ".join(labels)))
        scan_label = labels[0]
    elif scan_label not in p.scans:
        raise ConfigError("--scan %s: no such scan; the config has %s" % (scan_label, ", ".join(labels)))
    if output is None:
        output = os.path.join(os.path.expanduser(str(p.io.home)), "%s.%s" % (p.run, fmt or "h5"))
    fmt = guess_format(output, fmt)
    if parallel.master:
        check_writable(output, force=force, what="output file")
    data_pars = p.scans[scan_label].data
    if parallel.size > 1:  # FFT threads: the node's cores shared between its ranks

        set_workers(parallel.fft_workers())
    loader = get_loader(data_pars.name)(data_pars, path="scans.%s.data" % scan_label)
    # what to simulate (MoonFlowerScan), or checked against what the input records
    loader.propagation = p.scans[scan_label].get("propagation")
    sd = gather_scan(loader.load())
    if parallel.master:
        write_scan(output, fmt, sd, p, scan_label)
        logger.info("wrote %d frames of %d x %d to %s", sd.intensities.shape[0], sd.shape[0], sd.shape[1], output)
    parallel.barrier()
    if parallel.master:
        summary = dict(output=output, format=fmt, scan=scan_label, frames=int(sd.intensities.shape[0]),
                       shape=[int(s) for s in sd.shape], energy_kev=float(sd.energy_kev),
                       distance_m=float(sd.distance_m), psize_m=[float(v) for v in np.broadcast_to(sd.psize_m, (2,))],
                       propagation=str(sd.meta.get("propagation", "farfield")),
                       ground_truth=bool(sd.ground_truth), time_s=round(time.time() - t0, 3))
        emit_result(summary, as_json, output)
