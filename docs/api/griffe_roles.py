"""Griffe extension for the API pages: read convspectra's docstrings as they are written.

The docstrings are Google style with two habits of Sphinx that mkdocstrings does not know:

* Sphinx roles (``:func:`name```, ``:class:`~pkg.Name```) become optional cross-references: a
  link when the target is on one of the API pages, plain code otherwise (never a warning). Bare
  names are resolved the way Python would, from the object outwards through its parents.
* A section titled ``Example:`` (singular) is read as the ``Examples:`` section, so its doctest
  lines render as code instead of nested block quotes.
* An argument line naming several parameters (``layout, stride: as ...``) documents each of
  them, so every parameter gets its row and griffe still checks each name against the signature.

Loaded by ``mkdocs.yml`` (``extensions: [docs/api/griffe_roles.py]``); not a documentation page.
"""

from __future__ import annotations

import html
import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|data|attr|exc|obj|const):`(?P<tilde>~?)(?P<target>[\w.]+)`")
_EXAMPLE_HEADING = re.compile(r"^(?P<indent>[ \t]*)Example:[ \t]*$", re.MULTILINE)
_ARGS_HEADING = re.compile(
    r"^(?P<indent>[ \t]*)(?:Args|Arguments|Params|Parameters|Keyword Args|Keyword Arguments):[ \t]*$"
)
_SHARED_ITEM = re.compile(r"^(?P<indent>[ \t]*)(?P<names>\**\w+(?:[ \t]*,[ \t]*\**\w+)+)[ \t]*:(?P<rest>.*)$")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _split_shared_items(text: str) -> str:
    """``a, b: text`` in an arguments section becomes ``a: text`` and ``b: text`` (continuations kept)."""
    lines = text.split("\n")
    out: list[str] = []
    index = 0
    section: int | None = None  # indentation of the current arguments heading
    while index < len(lines):
        line = lines[index]
        heading = _ARGS_HEADING.match(line)
        if heading:
            section = len(heading["indent"])
        elif line.strip() and section is not None and _indent(line) <= section:
            section = None
        item = _SHARED_ITEM.match(line) if section is not None and not heading else None
        if item is None:
            out.append(line)
            index += 1
            continue
        index += 1
        continuation: list[str] = []
        while index < len(lines) and (not lines[index].strip() or _indent(lines[index]) > len(item["indent"])):
            continuation.append(lines[index])
            index += 1
        trailing: list[str] = []
        while continuation and not continuation[-1].strip():
            trailing.append(continuation.pop())
        for name in item["names"].split(","):
            out.extend([f"{item['indent']}{name.strip()}:{item['rest']}", *continuation])
        out.extend(trailing)
    return "\n".join(out)


def _resolve(obj: griffe.Object, target: str) -> str:
    """The full path ``target`` names where ``obj`` is documented (``target`` itself if dotted or unknown)."""
    if "." in target:
        return target
    scope: griffe.Object | None = obj
    while scope is not None:
        member = scope.members.get(target)
        if isinstance(member, griffe.Alias):
            try:
                return member.final_target.path
            except (griffe.AliasResolutionError, griffe.CyclicAliasError):
                return member.path
        if member is not None:
            return member.path
        scope = scope.parent
    return target


def _rewrite(obj: griffe.Object) -> None:
    docstring = obj.docstring
    if docstring is None:
        return

    def role(match: re.Match[str]) -> str:
        target = match["target"]
        shown = target.rsplit(".", 1)[-1] if match["tilde"] else target
        identifier = html.escape(_resolve(obj, target), quote=True)
        return f'<autoref identifier="{identifier}" optional><code>{html.escape(shown)}</code></autoref>'

    value = _ROLE.sub(role, docstring.value)
    value = _EXAMPLE_HEADING.sub(r"\g<indent>Examples:", value)
    docstring.value = _split_shared_items(value)


def _walk(obj: griffe.Object, seen: set[str]) -> None:
    if obj.path in seen:
        return
    seen.add(obj.path)
    _rewrite(obj)
    for member in obj.members.values():
        if not isinstance(member, griffe.Alias):
            _walk(member, seen)


class SphinxRoles(griffe.Extension):
    """Rewrite every docstring of a loaded package once, when the package is complete."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        _walk(pkg, set())
