"""``ptycli params``: list the declared parameters, check a configuration, dump the defaults."""

import json

import click
import yaml

from .. import parallel
from ..io.atomic import atomic_write, check_writable
from ..log import get_logger
from ..measures import ERROR_MEASURES
from ..params.tree import describe, dump_defaults_yaml, engine_sequence, result_path
from ..params.yamlio import to_plain
from ..runner import check_inputs, near_field
from .common import emit_result, load_tree, set_option

logger = get_logger(__name__)

_PURPOSES = {
    "reconstruct": dict(require_scans=True, require_engines=True),
    "simulate": dict(require_scans=True, require_engines=False),
    "any": dict(require_scans=False, require_engines=False),
}


def _plain(value):
    return to_plain(value)


def _default_text(value):
    text = yaml.safe_dump([_plain(value)], default_flow_style=True, width=10 ** 9).strip()
    return text[1:-1] if text.startswith("[") else text


def _print_rows(rows):
    for r in rows:
        unit = " [%s]" % r.unit if r.unit else ""
        click.echo("%s = %s%s" % (r.path, _default_text(r.default), unit))
        doc = r.doc[:1].upper() + r.doc[1:] if r.doc else ""
        click.echo("    %s; %s" % (doc, r.type) if doc else "    %s" % r.type)


def validate_config(config, overrides=(), purpose="reconstruct", check_data=True):
    """Load, validate and (optionally) check the scans' inputs of CONFIG; return the tree.

    Raises ConfigError / DataError (validation, exit 2) on the first problem.
    """
    p = load_tree(config, overrides, **_PURPOSES[purpose])
    if check_data and p.scans:
        check_inputs(p)
    return p


@click.command("params")
@click.argument("path", required=False, metavar="[PATH]")
@click.option("--validate", "config", metavar="CONFIG",
              help="Check CONFIG (a YAML file, '-' for stdin) without running anything.")
@click.option("--for", "purpose", type=click.Choice(sorted(_PURPOSES)), default="reconstruct",
              show_default=True, help="With --validate: what the config is for (reconstruct needs "
                                      "scans and engines, simulate scans only).")
@click.option("--no-data", is_flag=True, help="With --validate: do not open the scans' input files.")
@set_option
@click.option("--dump", is_flag=True, help="Print a complete commented YAML config with every default.")
@click.option("-o", "--output", default=None, metavar="FILE.yaml",
              help="With --dump: write to FILE.yaml instead of stdout.")
@click.option("--force", is_flag=True, help="With --dump -o: overwrite an existing file.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def params(path, config, purpose, no_data, overrides, dump, output, force, as_json):
    """List the declared parameters, or check a config (--validate), or dump the defaults (--dump).

    PATH selects parameters by dotted prefix: 'io', 'scans.MF.illumination',
    'scans.MF.data[Hdf5Scan]', 'engines.DM' (the engine's own parameters and
    the common ones). Each entry shows the default, the unit, the doc and the
    accepted values.

    --validate CONFIG loads CONFIG with the --set overrides, checks every key
    and value against the declarations and opens the scans' input files (not
    the frames). It prints 'OK' and exits 0, or prints one error line and
    exits 2.

    \b
    Examples:
      ptycli params                          every parameter
      ptycli params engines.DM               DM's parameters
      ptycli params scans.MF.data --json | jq '.[].path'
      ptycli params --validate run.yaml --set engines.dm.numiter=10
      ptycli params --dump > my_run.yaml     commented default config
      ptycli params errors                   what fourier_error, likelihood, ... mean
    """
    modes = sum(bool(x) for x in (config, dump))
    if modes > 1:
        raise click.UsageError("--validate and --dump exclude each other; give one")
    if (config or dump) and path:
        raise click.UsageError("PATH lists parameters; it cannot be combined with --validate or --dump")
    if overrides and not config:
        raise click.UsageError("--set only applies to --validate CONFIG")
    if output and not dump:
        raise click.UsageError("-o/--output only applies to --dump")

    if config:
        p = validate_config(config, overrides, purpose=purpose, check_data=not no_data)
        chain = engine_sequence(p, near_field=None if no_data else near_field(p))  # as the run's (Job)
        summary = dict(valid=True, config=config, run=p.run, scans=list(p.scans),
                       engines=[dict(label=label, name=e.name, numiter=int(e.numiter)) for label, e in chain],
                       output=result_path(p, iterations=sum(int(e.numiter) for _, e in chain)))
        emit_result(summary, as_json, "OK")
        return

    if dump:
        text = dump_defaults_yaml()
        if output:
            if parallel.master:
                check_writable(output, force=force, what="output file")
                with atomic_write(output) as tmp:
                    with open(tmp, "w", encoding="utf-8") as fh:
                        fh.write(text)
                logger.info("wrote %s", output)
            emit_result(dict(output=output), as_json, output)
        elif parallel.master:
            if as_json:
                click.echo(json.dumps({"yaml": text}))
            else:
                click.echo(text, nl=False)
        return

    if path in ("errors", "history"):  # the error measures of the history (ptycli.measures)

        if parallel.master:
            if as_json:
                click.echo(json.dumps([dict(name=k, units=u, doc=d) for k, (u, d) in ERROR_MEASURES.items()],
                                      indent=1))
            else:
                for name, (units, doc) in ERROR_MEASURES.items():
                    click.echo("history.%s%s\n    %s" % (name, " [%s]" % units if units else "", doc))
        return

    rows = describe(path)
    if not parallel.master:
        return
    if as_json:
        click.echo(json.dumps([dict(path=r.path, default=_plain(r.default), type=r.type, doc=r.doc,
                                    unit=r.unit) for r in rows], indent=1))
    else:
        _print_rows(rows)


__all__ = ["params", "validate_config"]
