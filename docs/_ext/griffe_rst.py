"""A griffe extension that lets mkdocstrings render jaxpop's reST-flavoured docstrings.

jaxpop's docstrings are Google style with a few reStructuredText habits, which Markdown
would show literally. Once the package is loaded, every docstring is rewritten:

* a role (``:func:`name```, ``:class:`~jaxpop.x.Y```, ...) becomes a cross-reference to
  the object's page, resolved from the docstring's scope, or plain code when it names
  something outside jaxpop or private; a jaxpop name that resolves to nothing is a
  warning, so ``mkdocs build --strict`` fails on a stale reference;
* a doctest (lines from ``>>>`` to the next blank line) and a literal block (``::``
  then an indented block) become fenced code;
* ``docs/<page>.md`` in double backticks becomes a link to that page of the site.

A name a module imports from another public jaxpop module and lists in ``__all__`` is
documented only where it is defined; special methods (``__len__``, ...) are left out.

It changes only what the site shows; the docstrings in the source stay as they are.
"""

from __future__ import annotations

import logging
import re

import griffe

__all__ = ["RestRoles"]

log = logging.getLogger("mkdocs.plugins.jaxpop_rst")

ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|data|attr|exc|obj|const):`(~?)([^`<>]+)`")
DOCS_LINK = re.compile(r"``docs/([a-z0-9_-]+)\.md(#[a-z0-9_-]+)?``")
TOP = "jaxpop"


def _lookup(collection: griffe.ModulesCollection, path: str) -> griffe.Object | None:
    try:
        obj = collection.get_member(path)
    except (KeyError, ValueError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None
    if isinstance(obj, griffe.Alias):
        try:
            obj = obj.final_target
        except (griffe.AliasResolutionError, griffe.CyclicAliasError):
            return None
    return obj


def _resolve(obj: griffe.Object, name: str) -> str | None:
    """The full path ``name`` means in ``obj``'s docstring, or None."""
    name = name.strip().removesuffix("()")
    if name.startswith(f"{TOP}.") or name == TOP:
        return name
    head, _, rest = name.partition(".")
    scope: griffe.Object | None = obj
    while scope is not None:
        try:
            path = scope.resolve(head)
        except (griffe.NameResolutionError, KeyError, ValueError):
            path = None
        if path is None and scope.is_class:  # an inherited member
            try:
                member = scope.all_members.get(head)
                if isinstance(member, griffe.Alias):
                    member = member.final_target
            except (griffe.AliasResolutionError, griffe.CyclicAliasError):
                member = None
            path = member.path if member is not None else None
        if path is not None:
            return f"{path}.{rest}" if rest else path
        scope = scope.parent
    return None


def _is_public(path: str) -> bool:
    return not any(part.startswith("_") for part in path.split("."))


class RestRoles(griffe.Extension):
    """Rewrites every docstring of the package once it is loaded."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs) -> None:
        if pkg.name != TOP:
            return
        self.collection = loader.modules_collection
        self._visit(pkg, set())

    def _visit(self, obj: griffe.Object, seen: set[str]) -> None:
        if obj.path in seen:
            return
        seen.add(obj.path)
        if obj.is_class:
            _signature_from_new(obj)
            for name, member in obj.members.items():  # __len__, __post_init__, ...
                if name.startswith("__") and name.endswith("__") and name != "__init__":
                    member.public = False
        if obj.is_module and obj.exports:
            obj.exports = [name for name in obj.exports if not self._reexported(obj, name)]
        if obj.docstring is not None:
            obj.docstring.value = self.rewrite(obj, obj.docstring.value)
        for member in obj.members.values():
            if not isinstance(member, griffe.Alias):
                self._visit(member, seen)

    @staticmethod
    def _reexported(module: griffe.Module, name: object) -> bool:
        """Whether ``name`` is imported from another public jaxpop module (it is
        documented there, and rendering it twice would give two anchors)."""
        member = module.members.get(str(name))
        if not isinstance(member, griffe.Alias):
            return False
        try:
            target = member.final_target
        except (griffe.AliasResolutionError, griffe.CyclicAliasError):
            return False
        return target.path.startswith(f"{TOP}.") and _is_public(target.path)

    def _role(self, obj: griffe.Object, match: re.Match) -> str:
        short, name = match.group(1), match.group(2).strip()
        shown = name.rsplit(".", 1)[-1] if short else name
        path = _resolve(obj, name)
        if path is None or not path.startswith(TOP):
            if name.startswith(f"{TOP}.") or (path is None and "." not in name):
                log.warning("%s: %s does not name a jaxpop object", obj.path, name)
            return f"`{shown}`"
        target = _lookup(self.collection, path)
        if target is None:
            log.warning("%s: %s (%s) does not name a jaxpop object", obj.path, name, path)
            return f"`{shown}`"
        path = target.path
        if not _is_public(path) or not target.is_public:
            return f"`{shown}`"
        return f"[`{shown}`][{path}]"

    def rewrite(self, obj: griffe.Object, text: str) -> str:
        text = ROLE.sub(lambda m: self._role(obj, m), text)
        text = DOCS_LINK.sub(lambda m: f"[docs/{m[1]}.md]({_page_url(m[1])}{m[2] or ''})", text)
        text = text.replace("``\\ ", "``")
        return _fence_blocks(text)


def _signature_from_new(cls: griffe.Class) -> None:
    """Gives a class built in ``__new__`` (the mutators subclass a NamedTuple) the
    constructor signature ``__new__`` takes, as if it were its ``__init__``."""
    new, init = cls.members.get("__new__"), cls.members.get("__init__")
    if not isinstance(new, griffe.Function) or init is not None or not new.parameters:
        return
    parameters = list(new.parameters)[1:]  # without cls
    cls.set_member(
        "__init__",
        griffe.Function(
            "__init__",
            lineno=new.lineno,
            endlineno=new.endlineno,
            parameters=griffe.Parameters(griffe.Parameter("self"), *parameters),
            returns=None,
        ),
    )


def _page_url(page: str) -> str:
    # API pages live one folder down (docs/api/*.md); ``index`` is the home page.
    return f"../{page}.md"


def _fence_blocks(text: str) -> str:
    """Doctests and ``::`` literal blocks as fenced code; the rest unchanged."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    fenced = False
    while i < len(lines):
        line = lines[i]
        stripped = line.lstrip()
        if stripped.startswith("```"):
            fenced = not fenced
            out.append(line)
            i += 1
            continue
        if fenced:
            out.append(line)
            i += 1
            continue
        if stripped.startswith(">>>"):
            indent = line[: len(line) - len(stripped)]
            block = []
            while i < len(lines) and lines[i].strip():
                block.append(lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i])
                i += 1
            out += [f"{indent}```pycon", *(indent + b for b in block), f"{indent}```"]
            continue
        if stripped.endswith("::") and i + 1 < len(lines) and not lines[i + 1].strip():
            indent = len(line) - len(stripped)
            j = i + 1
            while j < len(lines) and not lines[j].strip():
                j += 1
            first = lines[j] if j < len(lines) else ""
            body_indent = len(first) - len(first.lstrip())
            if first.strip() and body_indent > indent:
                text_part = line.rstrip()[:-2].rstrip()
                if text_part.strip():
                    out.append(text_part + ":")
                out.append("")
                block = []
                while j < len(lines) and (
                    not lines[j].strip() or len(lines[j]) - len(lines[j].lstrip()) >= body_indent
                ):
                    block.append(lines[j][body_indent:])
                    j += 1
                while block and not block[-1].strip():
                    block.pop()
                pad = " " * indent
                out += [f"{pad}```python", *(pad + b if b else "" for b in block), f"{pad}```"]
                out.append("")
                i = j
                continue
        out.append(line)
        i += 1
    return "\n".join(out)
