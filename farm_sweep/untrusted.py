"""Files that a user or another program wrote: read them within bounds, and quote their values briefly.

`read_text(path)` reads a regular file only (never a device such as /dev/zero, a FIFO or a folder, which
could be endless or block), of at most MAX_FILE_BYTES, as UTF-8. `load_yaml(text)` is yaml's SafeLoader
(plain data only) that refuses a key given twice in one mapping (merge keys `<<: *base` are allowed),
nesting deeper than MAX_DEPTH, a document larger than MAX_EXPANDED once its aliases are expanded (a
"billion laughs" file is refused, not expanded) and integers longer than MAX_INT_DIGITS. `load_json(path)`
is the same for JSON. `quote(value)` is the repr of a value cut to a short prefix: error messages embed
values with it, so a message stays short whatever the file held. `is_plain_name(text)` says whether a name
taken from data can become a file name without leaving its folder.
"""

from __future__ import annotations

import json
import os
import re
import reprlib
import stat
from pathlib import Path
from typing import Any

import yaml

MAX_FILE_BYTES = 1_000_000  # study, search-space and export description files are a few kilobytes
MAX_EXPANDED = 2 * MAX_FILE_BYTES  # nodes plus scalar characters of a document with its aliases expanded
MAX_DEPTH = 50  # levels of nesting
MAX_INT_DIGITS = 100
QUOTE_CHARS = 80
PATH_CHARS = 300  # a path is quoted whole unless it is absurdly long
MAX_NAME_LENGTH = 100  # of a name that becomes a file name (file systems allow 255 bytes)
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class InputError(ValueError):
    """A file that cannot be read as the data it should hold; the message says why (callers add the file)."""


def read_text(path: Path, limit: int = MAX_FILE_BYTES) -> str:
    """The file's UTF-8 text; InputError for a file that is missing, not regular, too large or not UTF-8."""
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused below)
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        raise InputError(f"cannot read the file ({error.strerror or error}); check the path") from None
    info = os.fstat(descriptor)
    if not stat.S_ISREG(info.st_mode):  # before fdopen, which refuses a folder with an OSError of its own
        os.close(descriptor)
        raise InputError(f"not a regular file ({_kind(info.st_mode)}); give the path of a file")
    with os.fdopen(descriptor, "rb") as handle:
        data = handle.read(limit + 1)
    if max(info.st_size, len(data)) > limit:
        raise InputError(f"the file has more than {limit:,} bytes, far more than such a file needs; check that "
                         "the path names the right file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InputError(f"not UTF-8 text (byte {data[error.start]:#04x} at offset {error.start}); save it as "
                         "UTF-8") from None


def _kind(mode: int) -> str:
    kinds = {stat.S_ISDIR: "a folder", stat.S_ISCHR: "a character device", stat.S_ISBLK: "a block device",
             stat.S_ISFIFO: "a FIFO", stat.S_ISSOCK: "a socket"}
    return next((name for test, name in kinds.items() if test(mode)), "not a plain file")


class _BoundedLoader(yaml.SafeLoader):
    """yaml's SafeLoader with the limits above, refusing duplicate keys (safe_load keeps the last)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        self._depth += 1  # composing is recursive: refuse deep nesting before Python's recursion limit does
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels",
                                                  self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        keys: list[Any] = []
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *base`: the base's keys may be overridden here
            key = self.construct_object(key_node, deep=True)
            if key in keys:
                raise yaml.constructor.ConstructorError(None, None, f"found duplicate key {quote(key)}",
                                                        key_node.start_mark)
            keys.append(key)
        return super().construct_mapping(node, deep)

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        if sum(character.isdigit() for character in node.value) > MAX_INT_DIGITS:
            raise yaml.constructor.ConstructorError(None, None, f"an integer of more than {MAX_INT_DIGITS} "
                                                    "digits", node.start_mark)
        return super().construct_yaml_int(node)


_BoundedLoader.add_constructor("tag:yaml.org,2002:int", _BoundedLoader.construct_yaml_int)


def load_yaml(text: str) -> Any:
    """The YAML document in `text` as plain data; InputError when it is not valid YAML or beyond the limits."""
    try:
        loader = _BoundedLoader(text)  # checks the characters at once
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            _check_expanded_size(node)
            return loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.YAMLError as error:
        raise InputError(f"not valid YAML ({_yaml_problem(error)}); correct the file there") from None


def _check_expanded_size(root: yaml.Node) -> None:
    """Walk the document as its consumers will, each alias expanded, and stop as soon as it is too large."""
    size, pending = 0, [root]
    while pending:
        node = pending.pop()
        if isinstance(node, yaml.ScalarNode):
            size += 1 + len(node.value)
        elif isinstance(node, yaml.SequenceNode):
            size += 1
            pending.extend(node.value)
        else:
            size += 1
            pending.extend(item for pair in node.value for item in pair)
        if size > MAX_EXPANDED:
            raise InputError(f"its aliases expand to more than {MAX_EXPANDED:,} nodes and characters (an alias "
                             "bomb?); write the values out, or refer to each anchor a few times only")


def _yaml_problem(error: yaml.YAMLError) -> str:
    """Where and what, without yaml's multi-line context (`line L, column C: problem`)."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None)
    if mark and problem:
        return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return str(error)[:QUOTE_CHARS]  # errors without a mark (unreadable characters) hold no content


def load_json(path: Path, limit: int = MAX_FILE_BYTES) -> Any:
    """The JSON document in a file; InputError when unreadable (see read_text), invalid or nested too deeply."""
    return parse_json(read_text(path, limit))


def parse_json(text: str) -> Any:
    try:
        return json.loads(text)
    except RecursionError:
        raise InputError("nested too deeply") from None
    except ValueError as error:  # also an integer beyond Python's digit limit
        raise InputError(f"not valid JSON ({error})") from None  # the position, never the content


def is_plain_name(text: str) -> bool:
    """Letters, digits, '_', '-', '.', not starting with '.', at most MAX_NAME_LENGTH characters: a name that can
    become a file name without leaving its folder."""
    return isinstance(text, str) and len(text) <= MAX_NAME_LENGTH and _PLAIN_NAME.fullmatch(text) is not None


class _Brief(reprlib.Repr):
    """reprlib's bounded repr, with strings cut to their beginning (never their end)."""

    def repr_str(self, value: str, level: int) -> str:
        return repr(value[:self.maxstring]) + ("..." if len(value) > self.maxstring else "")


def quote(value: Any, limit: int = QUOTE_CHARS) -> str:
    """repr(value) for a message, cut to `limit` characters (never computing the whole repr of a huge value)."""
    brief = _Brief()
    brief.maxlevel, brief.maxdict, brief.maxlist, brief.maxtuple = 3, 30, 10, 10
    brief.maxstring = brief.maxlong = brief.maxother = limit
    text = brief.repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."
