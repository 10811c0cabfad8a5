"""Reading and writing configuration YAML.

:func:`load_config` reads a configuration from a file, standard input
(``'-'``) or text with a strict loader: duplicate keys, tabs in the
indentation, an empty document and a top level that is not a mapping are
errors. Every problem is a :class:`~ptycli.errors.ConfigError` (exit code 2)
on one line, located as ``config.yaml:LINE:COL: <problem>; <fix>``.

Bounds: a configuration is at most :data:`MAX_CONFIG_BYTES` (read with a
bounded read, so an endless stream such as a device or a FIFO stops there),
its aliases may expand to at most :data:`MAX_NODES` values (a "billion
laughs" document is refused before anything is built) and it may nest at
most :data:`MAX_DEPTH` levels; a recursive alias is refused too.

:func:`dump_yaml` writes a tree as plain, safe YAML (numpy values become
plain Python numbers and lists).
"""

import os
import re
import stat
import sys

import yaml

from ..errors import ConfigError
from ..utils.param_tree import Param, to_plain

__all__ = ["BoundedLoader", "StrictLoader", "check_node_graph", "load_config", "load_config_text", "dump_yaml",
           "to_plain", "MAX_CONFIG_BYTES", "MAX_NODES", "MAX_DEPTH"]

_MERGE_TAG = "tag:yaml.org,2002:merge"

#: Largest configuration read (bytes); a complete commented default config is about 20 kB.
MAX_CONFIG_BYTES = 4 * 1024 * 1024
#: Most values (keys, scalars, lists, mappings) a document may hold with every alias expanded.
MAX_NODES = 100_000
#: Deepest nesting of lists and mappings; a configuration needs about six levels.
MAX_DEPTH = 100


class _LimitError(yaml.YAMLError):
    """A document beyond the size, alias or nesting bounds (message is final)."""


def _children(node):
    if isinstance(node, yaml.MappingNode):
        return [k for k, _ in node.value] + [v for _, v in node.value]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def check_node_graph(root, max_nodes=MAX_NODES, max_depth=MAX_DEPTH):
    """Refuse a composed YAML node graph whose aliases expand too far, nest too deep or loop.

    The graph is walked once (shared nodes, i.e. aliases, are measured once
    and counted at every use), without recursion, so the check costs time and
    memory in proportion to the text, not to its expansion.

    Parameters
    ----------
    root : yaml.Node
        The document's root node (``Loader.get_single_node()``).
    max_nodes, max_depth : int
        Bounds on the expanded number of nodes and on the nesting depth.

    Returns
    -------
    int
        The number of nodes with every alias expanded.

    Raises
    ------
    yaml.YAMLError
        Naming the line of the offending node; the message is a complete
        sentence with its fix.
    """
    size, depth = {}, {}
    active = set()
    stack = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            active.discard(key)
            kids = _children(node)
            size[key] = 1 + sum(size[id(k)] for k in kids)
            depth[key] = 1 + max((depth[id(k)] for k in kids), default=0)
            if size[key] > max_nodes:
                raise _LimitError(_at(node, "the aliases (*name) expand to more than %d values (an alias bomb?); "
                                        "write the values out, or use fewer nested aliases" % max_nodes))
            if depth[key] > max_depth:
                raise _LimitError(_at(node, "lists and mappings are nested more than %d levels deep; a "
                                        "configuration needs only a few (check for unclosed brackets)" % max_depth))
            continue
        if key in size:
            continue
        if key in active:
            raise _LimitError(_at(node, "a recursive alias: the value contains itself; "
                                    "an alias (*name) cannot refer to the value it is part of"))
        active.add(key)
        stack.append((node, True))
        for kid in _children(node):
            if id(kid) not in size:
                stack.append((kid, False))
    return size[id(root)]


def _at(node, text):
    mark = getattr(node, "start_mark", None)
    return ("%d:%d: %s" % (mark.line + 1, mark.column + 1, text)) if mark is not None else text


class BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses alias bombs, recursive aliases and deep nesting.

    The composed document goes through :func:`check_node_graph` before any
    Python object is built (``Param.from_yaml`` uses it).
    """

    def get_single_data(self):
        node = self.get_single_node()
        if node is None:
            return None
        check_node_graph(node)
        return self.construct_document(node)


class _DuplicateKeyError(yaml.constructor.ConstructorError):
    pass


class StrictLoader(BoundedLoader):
    """``yaml.SafeLoader`` that rejects duplicate mapping keys.

    Merge keys (``<<: *anchor``) still work: keys brought in by a merge may be
    overridden by keys written in the mapping itself, as YAML intends.
    Bounded like :class:`BoundedLoader`.
    """

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = {}
            for key_node, _ in node.value:
                if key_node.tag == _MERGE_TAG:
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # unhashable key: the base class reports it
                    continue
                if first is not None:
                    raise _DuplicateKeyError(
                        None, None,
                        "duplicate key %r (first given on line %d); each key may appear once per mapping"
                        % (key, first.line + 1),
                        key_node.start_mark)
                seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def _tab_line(lines, upto=None):
    """(line, column) of the first line (1-based) up to ``upto`` with a tab in its indentation."""
    for n, line in enumerate(lines, 1):
        if upto is not None and n > upto:
            break
        stripped = line.lstrip(" \t")
        indent = line[: len(line) - len(stripped)]
        if "\t" in indent and stripped.strip() and not stripped.startswith("#"):
            return n, indent.index("\t") + 1
    return None


_TOKENS = (("'<block mapping start>'", "a new indented mapping"), ("'<block sequence start>'", "a new list"),
           ("<block end>", "the end of the block"), ("'<stream end>'", "the end of the file"),
           ("'<scalar>'", "a value"), ("'<block end>'", "the end of the block"))

#: (pattern in PyYAML's problem, pattern in its context or None, our words, the fix); ``{ctx}`` is the
#: line of the context mark (where the enclosing block, bracket or quote starts)
_HINTS = (
    (r"expected <block end>, but found '<block mapping start>'", None,
     "bad indentation: this key does not line up with the keys of the mapping that starts at line {ctx}",
     "indent the keys of one mapping by the same number of spaces"),
    (r"expected <block end>, but found '<block sequence start>'", None,
     "bad indentation: this list does not line up with the block that starts at line {ctx}",
     "indent the '-' items of one list by the same number of spaces"),
    (r"expected <block end>, but found '-'", None,
     "a list item ('- ...') among the keys of the mapping that starts at line {ctx}",
     "write it as 'key: value', or indent it under a key to make a list"),
    (r"expected <block end>, but found '\?'", None,
     "a key among the '-' items of the list that starts at line {ctx}",
     "start it with '- ', or indent it less to end the list"),
    (r"expected <block end>", None, "bad indentation in the block that starts at line {ctx}",
     "line up the keys of one mapping (and the '-' items of one list) at the same column"),
    (r"did not find expected key", None, "bad indentation in the mapping that starts at line {ctx}",
     "line up its keys at the same column, with spaces"),
    (r"did not find expected '-' indicator", None, "bad indentation in the list that starts at line {ctx}",
     "line up its '-' items at the same column"),
    (r"mapping values are not allowed here", None, None,
     "a ': ' starts a key here: indent the key like its neighbours, put it on its own line, "
     "or quote a value that contains ': '"),
    (r"could not find expected ':'", None, None,
     "write 'key: value' (a space after the colon), or indent the line as part of the value above"),
    (r"expected ',' or '\}'", None, None,
     "close the '{' opened at line {ctx} with '}' and separate its items with commas"),
    (r"expected ',' or '\]'", None, None,
     "close the '[' opened at line {ctx} with ']' and separate its items with commas"),
    (r"end of stream", "quoted scalar", None, "close the quote opened at line {ctx}"),
    (r"found undefined alias '(.*)'", None, None, r"define the anchor (&\1) before using it (*\1)"),
    (r"cannot start any token", None, None,
     "quote the value ('...'): characters such as @ ` % cannot start a plain value"),
)


def _friendly(problem, context, cmark):
    """(problem words, fix, PyYAML's own words kept) for a PyYAML problem: its notation translated, a fix added."""
    ctx = str(cmark.line + 1) if cmark is not None else "?"
    for pattern, cpattern, words, fix in _HINTS:
        found = re.search(pattern, problem)
        if found and (cpattern is None or cpattern in (context or "")):
            own = words is None
            if own:
                words = problem
                for token, text in _TOKENS:
                    words = words.replace(token, text)
            return words.replace("{ctx}", ctx), found.expand(fix).replace("{ctx}", ctx), own
    words = problem
    for token, text in _TOKENS:
        words = words.replace(token, text)
    return words, "check the YAML syntax there: 'key: value' pairs, indentation with spaces", True


def _yaml_error(exc, name, text):
    if isinstance(exc, _LimitError):
        return ConfigError("%s:%s" % (name, exc.args[0]) if exc.args[0][:1].isdigit()
                           else "%s: %s" % (name, exc.args[0]))
    lines = text.splitlines()
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    line = mark.line + 1 if mark is not None else None
    tab = _tab_line(lines, line)
    if tab is not None:
        return ConfigError("%s:%d:%d: tab character in the indentation; YAML indents with spaces only "
                           "(replace the tab with spaces)" % (name, tab[0], tab[1]))
    if mark is not None and "'\\t'" in (getattr(exc, "problem", None) or ""):
        return ConfigError("%s:%d:%d: tab character; use spaces to indent and to separate a key from "
                           "its value (replace the tab with spaces)" % (name, mark.line + 1, mark.column + 1))
    if isinstance(exc, yaml.reader.ReaderError):
        pos = exc.position
        before = text[:pos]
        ln = before.count("\n") + 1
        col = pos - (before.rfind("\n") + 1) + 1
        char = exc.character if isinstance(exc.character, int) else ord(exc.character[:1] or "\0")
        return ConfigError("%s:%d:%d: %s (character U+%04X); remove it or quote the text" % (
            name, ln, col, exc.reason, char))
    if mark is None:
        return ConfigError("%s: %s" % (name, " ".join(str(exc).split())))
    problem = getattr(exc, "problem", None) or "invalid YAML"
    if isinstance(exc, _DuplicateKeyError):
        return ConfigError("%s:%d:%d: %s" % (name, mark.line + 1, mark.column + 1, problem))
    context = getattr(exc, "context", None)
    cmark = getattr(exc, "context_mark", None)
    words, fix, own = _friendly(problem, context, cmark)
    extra = ""
    if context and own:
        extra = " (%s%s)" % (context, " at line %d" % (cmark.line + 1) if cmark is not None
                             and cmark.line != mark.line else "")
    return ConfigError("%s:%d:%d: %s%s; %s" % (name, mark.line + 1, mark.column + 1, words, extra, fix))


def load_config_text(text, name="<string>"):
    """Parse configuration ``text``; ``name`` is used in messages. Returns a Param."""
    if text.startswith("\ufeff"):
        text = text[1:]
    if len(text) > MAX_CONFIG_BYTES:
        raise _too_large(name)
    try:
        data = yaml.load(text, Loader=StrictLoader)
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, name, text) from None
    except RecursionError:
        raise ConfigError("%s: lists and mappings are nested too deeply (more than %d levels); a configuration "
                          "needs only a few (check for unclosed brackets)" % (name, MAX_DEPTH)) from None
    if data is None:
        raise ConfigError("%s: config file is empty; write the parameters as a YAML mapping "
                          "(key: value), e.g. 'scans: {MF: {data: {name: MoonFlowerScan}}}'; "
                          "`ptycli params` lists them all" % name)
    if not isinstance(data, dict):
        kind = "a list" if isinstance(data, list) else "a single value (%r)" % (data,)
        raise ConfigError("%s: the top level must be a mapping of parameters (key: value), got %s"
                          % (name, kind))
    return Param(data)


def _looks_like_text(source):
    if "\n" in source:
        return True
    stripped = source.strip()
    if os.path.exists(source):
        return False
    return stripped.startswith("{") or ": " in stripped or stripped.endswith(":")


def load_config(source):
    """Read a configuration; return it as a :class:`~ptycli.utils.param_tree.Param`.

    Parameters
    ----------
    source : str, path-like or stream
        A file path, ``'-'`` for standard input, YAML text (a string holding a
        newline, or that is no existing file and looks like YAML, e.g.
        ``'verbose_level: 3'``), or an object with ``read()``.

    Raises
    ------
    ConfigError
        Missing, unreadable or non-text file, a directory, YAML syntax errors
        (``name:LINE:COL: problem``), tabs in the indentation, duplicate keys,
        an empty document, a top level that is not a mapping.
    """
    if hasattr(source, "read"):
        name = getattr(source, "name", "<stream>")
        data = _bounded_read(source, name)
        if isinstance(data, bytes):
            data = _decode(data, name)
        return load_config_text(data, str(name))
    if isinstance(source, str) and source == "-":
        stdin = getattr(sys.stdin, "buffer", None) or sys.stdin
        data = _bounded_read(stdin, "<stdin>")
        if isinstance(data, bytes):
            data = _decode(data, "<stdin>")
        return load_config_text(data, "<stdin>")
    if isinstance(source, str) and _looks_like_text(source):
        return load_config_text(source, "<string>")
    if not isinstance(source, (str, os.PathLike)):
        raise ConfigError("config: expected a file path, '-' or YAML text, got %r" % (source,))
    path = os.fspath(source)
    if os.path.isdir(path):
        raise ConfigError("%s is a directory, not a config file; give the path of a .yaml file" % path)
    try:
        with open(path, "rb") as fh:
            info = os.fstat(fh.fileno())
            if stat.S_ISREG(info.st_mode) and info.st_size > MAX_CONFIG_BYTES:
                raise _too_large(path, info.st_size)
            raw = _bounded_read(fh, path)
    except FileNotFoundError:
        raise ConfigError("config file not found: %s" % path,
                          hint="check the path (relative paths start at %s)" % os.getcwd()) from None
    except PermissionError:
        raise ConfigError("cannot read config file %s: permission denied" % path) from None
    except OSError as exc:
        raise ConfigError("cannot read config file %s: %s" % (path, exc.strerror or exc)) from None
    return load_config_text(_decode(raw, path), path)


def _too_large(name, size=None):
    return ConfigError("%s: %s, more than a configuration can be (at most %d MiB)" % (
        name, "%.3g MB" % (size / 1e6) if size is not None else "too large (or an endless stream)",
        MAX_CONFIG_BYTES // (1024 * 1024)), hint="give the YAML configuration file; data files go in "
                                                  "scans.<label>.data.dfile")


def _bounded_read(stream, name):
    """At most :data:`MAX_CONFIG_BYTES` from ``stream``; ConfigError when there is more."""
    data = stream.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise _too_large(name)
    return data


def _decode(raw, name):
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError("%s: not a UTF-8 text file (byte %d cannot be decoded); give a YAML text file"
                          % (name, exc.start)) from None


# -- writing ---------------------------------------------------------------------

class _Dumper(yaml.SafeDumper):
    """Safe dumper: mappings in block style, lists of scalars in flow style ``[1, 2]``."""

    def represent_list(self, data):
        flow = all(v is None or isinstance(v, (bool, int, float, str)) for v in data)
        return self.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _Dumper.represent_list)


def dump_yaml(param, stream=None):
    """The tree ``param`` as block-style YAML text (lists of scalars in flow style, ``[0.5, 1.0]``).

    Keys keep their order. Written to ``stream`` (an object with ``write``)
    when given; the text is returned either way.
    """
    text = yaml.dump(to_plain(param), Dumper=_Dumper, default_flow_style=False, sort_keys=False,
                     allow_unicode=True, width=100)
    if stream is not None:
        stream.write(text)
    return text

