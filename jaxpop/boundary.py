"""Values crossing into and out of a controller: copied, so callers cannot change history.

A worker that passes a dict of hyperparameters or a numpy array of parameters keeps its
own reference; if the controller stored that object, a later edit by the worker would
change the history in memory while the journal holds the original. :func:`copy_in`
gives the controller its own copy (fresh containers, numpy arrays copied and made
read-only; immutable values -- numbers, strings, ``jax.Array`` -- shared as they are).
:func:`copy_out` gives a caller fresh containers around the stored leaves, so editing a
returned ``meta_params`` dict changes nothing stored, and the read-only arrays refuse
edits. (What a caller reads through ``controller.history``, ``active_workers`` or
``state`` is the stored records themselves, not copies: they are read-only by
contract.) Both walk the common containers by hand (a ``jax.tree.map`` costs more than the
rest of a controller call) and fall back to ``jax.tree`` for other pytree nodes.
"""

from __future__ import annotations

import copy
from typing import Any

import jax
import numpy as np

__all__ = ["check_sortable_keys", "copy_in", "copy_out", "deep_copy_or_share", "private_copy"]

_IMMUTABLE = frozenset({type(None), bool, int, float, complex, str, bytes})


def _copy(x: Any, arrays: bool, deep: bool = False, frozen: bool = True) -> Any:
    t = type(x)
    if t in _IMMUTABLE:
        return x
    if t is dict:
        return {k: _copy(v, arrays, deep, frozen) for k, v in x.items()}
    if t is list:
        return [_copy(v, arrays, deep, frozen) for v in x]
    if t is tuple:
        return tuple(_copy(v, arrays, deep, frozen) for v in x)
    if isinstance(x, np.ndarray):  # (a subclass too: a masked array, a memmap)
        if not arrays:
            if not x.dtype.hasobject:
                return x
            # objects in it may be edited in place: a reply gets its own copies of them
            out = _copy_elements(x) if x.dtype == object else copy.deepcopy(x)
            out.flags.writeable = False
            return out
        if x.dtype == object:  # its elements are objects that may be edited in place
            out = deep_copy_or_share(x) if deep else _copy_elements(x)
        elif x.dtype.hasobject:  # (a structured dtype with an object field)
            out = copy.deepcopy(x)
        else:
            out = x.copy()
        if not frozen:  # (a private copy: its owner may edit it)
            return out
        out.flags.writeable = False
        if t is not np.ndarray and isinstance(out, np.ma.MaskedArray):
            # its mask too: masking an element writes the mask, not the data
            mask = np.ma.getmaskarray(out).copy()
            mask.flags.writeable = False
            out._mask = mask  # type: ignore[attr-defined]  # (the mask setter copies into it)
        return out
    if isinstance(x, np.void):  # a structured scalar: a view into the caller's array
        # (out too: a reply's edit would write the history; np.array(x) still views it)
        return copy.deepcopy(x) if x.dtype.hasobject else x.copy()
    if isinstance(x, jax.Array):
        if arrays and x.is_deleted():
            raise TypeError(
                "a deleted jax.Array (donated to a jitted call, or deleted): the history "
                "would hold an array no worker can load; pass a live array, or a handle"
            )
        return x
    if isinstance(x, np.generic):
        return x
    # one level: x's children are leaves here (walked below, in Python), x itself among
    # them too (jax's own walk of a node that holds itself used up the recursion limit
    # for good): of x, is_leaf says no the first time only
    first = iter((False,))
    leaves, treedef = jax.tree.flatten(x, is_leaf=lambda leaf: leaf is not x or next(first, True))
    if jax.tree_util.treedef_is_leaf(treedef) and leaves and leaves[0] is x:
        # a leaf of another type (an empty node has no leaves: made anew below, not shared)
        return deep_copy_or_share(x) if deep else x
    return jax.tree.unflatten(treedef, [_copy(leaf, arrays, deep, frozen) for leaf in leaves])


def _copy_elements(x: np.ndarray) -> np.ndarray:
    """A copy of an object array whose elements are copied as a tree's leaves are (a
    dict in it was the caller's own: an edit of it changed the history)."""
    out = x.copy()
    flat = out.view(np.ndarray).reshape(-1)  # (a view: the copy is contiguous)
    for i in range(flat.size):
        item = flat[i]
        copied = _copy(item, arrays=True)
        if copied is not item:
            flat[i] = copied
    return out


def copy_in(tree: Any, *, deep: bool = False, where: str = "a value") -> Any:
    """``tree`` with fresh containers and read-only copies of its numpy arrays; with
    ``deep``, leaves of other types (objects that may be edited in place) are deep
    copies too, where they can be copied (:func:`deep_copy_or_share`). A tree nested
    past Python's recursion limit, or one that holds itself, raises ``ValueError``
    naming it as ``where``.

    >>> meta = {"lr": 0.1}
    >>> stored = copy_in(meta)
    >>> meta["lr"] = 5.0
    >>> stored
    {'lr': 0.1}
    """
    try:
        return _copy(tree, arrays=True, deep=deep)
    except RecursionError:
        raise _too_deep(where) from None


def private_copy(tree: Any, *, where: str = "a value") -> Any:
    """``tree`` as a copy its receiver may edit in place: fresh containers, writable
    copies of its numpy arrays, deep copies of other leaves (where they can be copied).
    What a user's function is handed to change (a seed-style ``mutate_fn`` that does
    ``p["lr"] *= 2`` on a numpy ``lr``).

    >>> import numpy as np
    >>> mine = private_copy({"lr": np.array(0.1)})
    >>> mine["lr"] *= 2
    >>> float(mine["lr"])
    0.2
    """
    try:
        return _copy(tree, arrays=True, deep=True, frozen=False)
    except RecursionError:
        raise _too_deep(where) from None


def _too_deep(where: str) -> ValueError:
    return ValueError(f"{where} is nested too deep, or holds itself (a reference cycle)")


def deep_copy_or_share(leaf: Any) -> Any:
    """``copy.deepcopy(leaf)``, or ``leaf`` itself if it cannot be copied (a lock, a
    generator, an object whose copy raises)."""
    try:
        return copy.deepcopy(leaf)
    except Exception:  # (whatever its __deepcopy__ raises: shared, as it always was)
        return leaf


def copy_out(tree: Any) -> Any:
    """``tree`` with fresh containers around the same leaves (for stored values going out)."""
    return _copy(tree, arrays=False)


def _flat(tree: Any) -> bool:
    """Whether ``tree`` is a dict of str keys and plain values (its keys sort)."""
    if type(tree) is not dict:
        return False
    for k, v in tree.items():  # noqa: SIM110 (all() over two generators costs ~5x more)
        if type(k) is not str or type(v) not in _IMMUTABLE:
            return False
    return True


def _plain(tree: Any, depth: int = 0) -> bool:
    """Whether ``tree`` is a dict of str keys and plain values or such dicts, at most a
    few levels deep (so its keys sort, and it cannot hold itself)."""
    if type(tree) is not dict or depth > 4:
        return False
    for k, v in tree.items():
        if type(k) is not str or (type(v) not in _IMMUTABLE and not _plain(v, depth + 1)):
            return False
    return True


def check_sortable_keys(tree: Any, where: str) -> None:
    """Raises ``TypeError`` if a dict in ``tree`` has keys JAX cannot sort (``{1: a, "1": b}``),
    ``ValueError`` if ``tree`` is nested past the recursion limit or holds itself.

    JAX flattens a dict in sorted key order, so such hyperparameters would fail at the
    first exploit; refuse them where they enter instead.
    """
    if _plain(tree):  # the usual case: nothing to walk
        return
    try:
        # a Python walk first: jax's flatten of a dict that holds itself raised a
        # TypeError and left the interpreter unable to recurse
        _copy(tree, arrays=False)
        jax.tree.flatten(tree)
    except (TypeError, ValueError) as e:  # jax raises either, by version
        raise TypeError(
            f"{where} has a dict whose keys cannot be sorted ({e}); JAX orders dict keys, "
            "so use keys of one type (e.g. all str)"
        ) from None
    except (RecursionError, SystemError) as e:  # (jax's C++ flatten: a SystemError of one)
        if isinstance(e, RecursionError) or isinstance(e.__cause__, RecursionError):
            raise _too_deep(where) from None
        raise
