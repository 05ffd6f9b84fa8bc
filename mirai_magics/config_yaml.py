"""The config file's YAML, read within bounds: any file gets its verdict in well under 1 s.

A YAML alias is a reference: a 500-byte file of nine anchors each holding nine aliases of
the one before ("billion laughs") composes in microseconds, then expands to 9^9 values in
anything that walks it (the secret scan, the layer merge, validation). And 1 MB of ``1,``
composes into 500,000 nodes, which alone takes seconds. So, in order, each cheap step
guarding the next:

1. a file over MAX_BYTES, or not a regular file (a FIFO or /dev/zero never ends), is
   refused before it is read to the end;
2. libyaml's event stream is counted, and stops at MAX_VALUES values or MAX_DEPTH levels,
   before any node is built;
3. the composed node graph is measured as YAML shares it (each node once) and refused past
   MAX_ALIAS_VALUES values added by aliases, or when an alias refers to its own anchor;

only then is it turned into Python data. The packaged config has ~500 values, 4 levels
deep, in 12 KB.

The one tag beyond plain YAML is ``!replace`` on a mapping (``models: !replace``): it
becomes a :class:`Replace`, which the layer merge puts in place of the lower layers'
mapping instead of merging into it (an Ollama-only file keeps exactly its own profiles).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .text import clip

MAX_BYTES = 1_000_000
MAX_VALUES = 20_000
MAX_ALIAS_VALUES = 10_000
MAX_DEPTH = 32
REPLACE_TAG = "!replace"
# libyaml's parser when PyYAML has it (10× faster); the pure-Python one otherwise
_SafeLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class Replace(dict):  # type: ignore[type-arg]
    """A mapping tagged ``!replace``: it replaces what the lower layers wrote there."""


class _Loader(_SafeLoader):  # type: ignore[misc,valid-type]
    """The safe loader plus ``!replace`` (on PyYAML's own classes nothing is registered)."""


def _replace(loader: Any, node: yaml.Node) -> Replace:
    if not isinstance(node, yaml.MappingNode):
        raise yaml.constructor.ConstructorError(
            None, None, f"{REPLACE_TAG} goes on a mapping (models: {REPLACE_TAG})", node.start_mark
        )
    return Replace(loader.construct_mapping(node, deep=True))


_Loader.add_constructor(REPLACE_TAG, _replace)
_VALUE_EVENTS = (yaml.ScalarEvent, yaml.AliasEvent, yaml.CollectionStartEvent)


def read_text(path: Path) -> str:
    """The file's text, refused when it is not a regular file, over MAX_BYTES or not UTF-8."""
    try:
        with open(path, "rb", opener=_open_regular) as file:
            data = file.read(MAX_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror})") from None
    check_size(len(data), str(path))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None


def _open_regular(path: str, flags: int) -> int:
    """``os.open`` that refuses what is not a regular file (without blocking on a FIFO)."""
    fd = os.open(path, flags | os.O_NONBLOCK)
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
        raise OSError(errno.EINVAL, "not a regular file")
    return fd


def check_size(size: int, source: str) -> None:
    if size > MAX_BYTES:
        raise ConfigError(
            f"{source}: config file is over {MAX_BYTES // 1_000_000} MB",
            hint="a config is a few KB: point MIRAI_CONFIG at the right file",
        )


def load(text: str, source: str) -> Any:
    """The data of one YAML document (None when empty), once it passed every bound."""
    check_size(len(text.encode("utf-8", "surrogatepass")), source)
    try:
        aliases = count_events(text, source)
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            if aliases:  # without any, the events already bound the tree
                check_shape(node, source)
            return loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:  # also an unknown tag: !!python/object is not safe
        raise ConfigError(_yaml_problem(exc, source)) from None
    except (ValueError, TypeError, AttributeError, OverflowError) as exc:
        # a scalar PyYAML's constructors choke on: month 13, 5000 digits, !!int '0x'
        raise ConfigError(f"{source}: a value YAML cannot read ({clip(str(exc), 100)})") from None


def compose(text: str) -> yaml.Node | None:
    """The node tree of a document :func:`load` accepted (to find a key's line)."""
    return yaml.compose(text, Loader=_Loader)


def count_events(text: str, source: str) -> int:
    """Refuse more than MAX_VALUES values or MAX_DEPTH levels, stopping as soon as it knows;
    the number of aliases."""
    values = depth = aliases = 0
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, _VALUE_EVENTS):
            values += 1
            aliases += isinstance(event, yaml.AliasEvent)
            if values > MAX_VALUES:
                raise ConfigError(f"{source}: more than {MAX_VALUES:,} values (a config has ~500)")
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise ConfigError(f"{_at(event, source)}: nested deeper than {MAX_DEPTH} levels")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
    return aliases


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def check_shape(root: yaml.Node, source: str) -> None:
    """Refuse a node graph whose aliases expand past MAX_ALIAS_VALUES values (or nest past
    MAX_DEPTH), or that refers to itself. No recursion: each node is measured once, from
    its children's sizes, so a bomb is refused after a few hundred steps."""
    size: dict[int, int] = {}  # node id → values under it, aliases expanded
    depth: dict[int, int] = {}
    open_: set[int] = set()  # on the current path: meeting one again is a cycle
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key, kids = id(node), _children(node)
        if children_done:
            open_.discard(key)
            size[key] = 1 + sum(size[id(kid)] for kid in kids)
            depth[key] = 1 + max((depth[id(kid)] for kid in kids), default=0)
            # len(size) nodes are written in the file so far: the rest come from aliases
            _check_expansion(node, size[key] - len(size), depth[key], source)
        elif key in open_:
            raise ConfigError(f"{_at(node, source)}: a YAML alias refers to its own anchor")
        elif key not in size:
            open_.add(key)
            stack.append((node, True))
            stack.extend((kid, False) for kid in kids if id(kid) not in size)


def _check_expansion(node: yaml.Node, added: int, levels: int, source: str) -> None:
    if added > MAX_ALIAS_VALUES:
        raise ConfigError(
            f"{_at(node, source)}: YAML aliases expand to more than {MAX_ALIAS_VALUES:,} "
            "values (an alias bomb?)",
            hint="write the values out, or use fewer nested aliases",
        )
    if levels > MAX_DEPTH:
        raise ConfigError(f"{_at(node, source)}: aliases nest deeper than {MAX_DEPTH} levels")


def _yaml_problem(exc: yaml.YAMLError, source: str) -> str:
    mark = getattr(exc, "problem_mark", None)
    where = f" line {mark.line + 1}" if mark is not None else ""
    problem = getattr(exc, "problem", None) or "not valid YAML"
    return f"{source}:{where}: invalid YAML: {problem}"


def _at(item: Any, source: str) -> str:
    return f"{source}: line {item.start_mark.line + 1}"
