"""``ptycli plot``: a figure of a reconstruction (object, probe, errors) or of a data file."""

import os

import click
import numpy as np

from .. import parallel
from ..errors import ConfigError, DataError
from ..io.atomic import atomic_write, check_writable
from ..io.cxi import read_cxi_frames, read_cxi_result
from ..io.datafile import read_datafile
from ..io.ptyd import read_ptyd_frames, read_ptyd_meta
from ..io.reading import reading
from ..io.reconstruction import Reconstruction, load_reconstruction
from ..log import get_logger
from ..utils import plotting
from ..utils.parameters import Param
from ..utils.plot_utils import PLOT_INSTALL_HINT
from .common import emit_result
from .inspect import identify

logger = get_logger(__name__)

__all__ = ["plot"]

_FORMATS = (".png", ".pdf", ".svg", ".jpg", ".jpeg", ".tif", ".tiff", ".eps", ".ps", ".webp")


def _plotting():
    """The plotting module, or a one-line error when matplotlib is missing."""
    try:
        plotting.figure_module()
    except ImportError:  # an installation to complete, not a failure while running: exit 2
        raise ConfigError(PLOT_INSTALL_HINT) from None
    return plotting


def _data_for_plot(path, kind):
    if kind == "data":
        sd = read_datafile(path)
        return dict(intensities=sd.intensities, positions=sd.positions, positions_unit=sd.positions_unit,
                    ground_truth=sd.ground_truth, label=sd.label)
    if kind == "cxi":
        fr = read_cxi_frames(path)
        return dict(intensities=fr["data"], positions=fr["positions"], positions_unit="m",
                    label=os.path.basename(path))
    if kind == "ptyd":
        m = read_ptyd_meta(path, with_info=False)
        fr = read_ptyd_frames(path, 0, m["num_frames"])
        return dict(intensities=fr["data"], positions=fr["positions"], positions_unit="m",
                    label=m.get("label") or os.path.basename(path))
    raise DataError("%s: cannot plot this kind of file" % path)


def _cxi_result_as_reconstruction(path):
    r = read_cxi_result(path)

    def meta(ps):
        return {} if ps is None else {"psize": np.asarray(ps, float)}

    obj = np.asarray(r["object"])
    prb = np.asarray(r["probe"]) if r["probe"] is not None else None
    obj = obj.reshape((-1,) + obj.shape[-2:])
    objects = {"object": obj}
    probes = {} if prb is None else {"probe": prb.reshape((-1,) + prb.shape[-2:])}
    return Reconstruction(path=path, kind="cxi", params=Param(), parameters_yaml=r.get("configuration") or "",
                          objects=objects, probes=probes, object_meta={"object": meta(r["object_psize_m"])},
                          probe_meta={"probe": meta(r["probe_psize_m"])}, scans={}, history=[], engines=[],
                          provenance={}, attrs={})


@click.command()
@click.argument("file", metavar="FILE")
@click.option("-o", "--output", required=True, metavar="OUT.png",
              help="Figure file; the format follows the extension (png, pdf, svg, ...).")
@click.option("--dpi", default=110, show_default=True, type=click.IntRange(20, 1200), help="Resolution.")
@click.option("--title", default=None, help="Figure title (default: file name and iterations).")
@click.option("--force", is_flag=True, help="Overwrite an existing figure.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON summary on stdout.")
def plot(file, output, dpi, title, force, as_json):
    """Draw FILE as a figure: object amplitude and phase, probe modes and error curves.

    FILE is a reconstruction written by 'ptycli reconstruct' (or a CXI
    result); a data file (ptycli HDF5, CXI, .ptyd) gives its mean diffraction
    pattern, the scan positions and any ground truth. Needs matplotlib
    (pip install 'ptycli[plot]').

    \b
    Examples:
      ptycli plot out/recon.h5 -o out/recon.png
      ptycli plot out/recon.h5 -o recon.pdf --title "MoonFlower, DM + ML"
      ptycli plot sample_data/moonflower.h5 -o data.png

    A reconstruction's figure shows object amplitude and phase with their
    colour bars, the scan positions (initial and refined when refinement moved
    them), the probe modes with a colour wheel (hue = phase, brightness =
    amplitude) and the error curves ('ptycli params errors' defines them).
    """
    ext = os.path.splitext(output)[1].lower()
    if ext not in _FORMATS:
        raise ConfigError("-o %s: unknown figure format %r" % (output, ext or "(no extension)"),
                          hint="end the name with one of %s" % ", ".join(_FORMATS))
    with reading(file):
        kind = identify(file)
    if kind == "hdf5":
        raise DataError("%s: not a file ptycli can plot (no reconstruction or scan layout it knows)" % file,
                        hint="'ptycli inspect --tree %s' lists its contents" % file, validation=True)
    if not parallel.master:
        return
    check_writable(output, force=force, what="figure")
    plotting = _plotting()
    with reading(file):  # a damaged file gives a one-line error naming it
        if kind == "reconstruction":
            rec = load_reconstruction(file, with_state=False)
            draw = lambda tmp: plotting.plot_reconstruction(rec, tmp, dpi=dpi, title=title)  # noqa: E731
        elif kind == "cxi-result":
            rec = _cxi_result_as_reconstruction(file)
            draw = lambda tmp: plotting.plot_reconstruction(rec, tmp, dpi=dpi, title=title)  # noqa: E731
        else:
            data = dict(_data_for_plot(file, kind), source=file)
            draw = lambda tmp: plotting.plot_data(data, tmp, dpi=dpi, title=title)  # noqa: E731
    with atomic_write(output) as tmp:
        draw(tmp)
    logger.info("wrote %s", output)
    emit_result(dict(output=output, file=file, kind=kind), as_json, output)
