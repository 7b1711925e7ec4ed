"""A journal record's mutator state, written as its change from the state before it.

jaxpop's own PBT and FIRE states hold an entry per worker; written whole in every
journal record, they made each decision's record O(population) to encode and store. Their
mutators never change a state in place (an update returns a new record sharing what it
did not change), so a record carries a :class:`StateDelta` found by identity from the
state journaled before it, and replay rebuilds the state (:func:`applied`). Any other
state, a user's included, is written whole (a change found by identity would miss one
made in place by a mutator that breaks the rule below). Every mutator must return a new
state rather than change its own: a controller journals an event only when something
changed, and a state returned as the same object, in an event that changed nothing
else, is taken as unchanged and never reaches the journal. ``docs/storage.md`` has the
format.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from jaxpop import encoding

__all__ = ["StateDelta", "applied", "delta"]

#: the registered names of the states written as deltas: jaxpop's own, which its
#: mutators never change in place (see each one's update)
_BY_FIELD = frozenset({"jaxpop.PBTState", "jaxpop.FireState"})
#: the fields each had when it was first journaled so: a field added later comes last,
#: with a default, and a change journaled before it leaves it as it was (its default,
#: in a run whose journal predates it)
_FIRST_FIELDS = {"jaxpop.PBTState": 4, "jaxpop.FireState": 9}


@dataclasses.dataclass(frozen=True)
class StateDelta:
    """A mutator state as the change of each of its fields from the state before it.

    ``fields[i]`` is ``()`` (the same value), ``(value,)`` (a new value) or ``(changed,
    removed)`` for a dict: its entries that are new or differ (``changed``, a dict) and
    the keys it no longer has there (``removed``, a tuple; a key deleted and added again
    is in both), so that the dict rebuilt from its change has the state's keys in the
    state's order (its encoding is the same bytes).
    """

    fields: tuple


encoding.register_record(StateDelta, "jaxpop.StateDelta")

_SAME: tuple = ()
_MISSING = object()


def delta(before: Any, after: Any) -> Any:
    """``after`` as a :class:`StateDelta` from ``before`` when both are the same record
    type, one of ``_BY_FIELD``; else ``after`` itself (written whole).

    A field (or a dict's entry) is the same when it is the same object: these states
    share what an update did not change, and never change it in place."""
    cls = type(after)
    if cls is not type(before) or encoding.record_name(cls) not in _BY_FIELD:
        return after
    fields = []
    for old, new in zip(before, after, strict=True):
        if new is old:
            fields.append(_SAME)
        elif type(new) is dict and type(old) is dict:
            change = _dict_change(old, new)
            # a key not equal to itself (NaN) is found again on replay only as the same
            # object, which decoding never gives: the dict is written whole
            written = all(map(_self_equal, change[0])) and all(map(_self_equal, change[1]))
            fields.append(change if written else (new,))
        else:
            fields.append((new,))
    return StateDelta(tuple(fields))


def _self_equal(key: Any) -> bool:
    """Whether a dict key equals itself decoded from the journal (not NaN, nor a tuple
    or a record holding one: compared there, decoded NaN is another object)."""
    if type(key) is int or type(key) is str:  # (the workers' ids: no encoding per key)
        return True
    try:
        return bool(encoding.decode(encoding.encode(key)) == key)
    except Exception:  # (what cannot be encoded fails the record's encoding itself)
        return False


def _dict_change(old: dict, new: dict) -> tuple[dict, tuple]:
    """``new`` as ``(changed, removed)`` from ``old``, in its own key order.

    A dict's keys are in insertion order: ``new`` holds some of ``old``'s keys in their
    old order (values changed there stay there), then the keys it added, or deleted and
    added again, in the order it added them. The first part is taken as the longest
    start of ``new`` whose keys come in ``old``'s order. ``removed`` lists ``old``'s keys
    that are not in it (gone, or added again), and ``changed`` its changed entries, then
    every key after it: :func:`applied` pops the first and updates with the second,
    which puts every key back where ``new`` has it (and a key added again costs one
    entry, not the keys after its old place)."""
    old_keys, new_keys = list(old), list(new)
    if new_keys[: len(old_keys)] == old_keys:  # the usual: keys only added at the end
        prefix, removed = len(old_keys), ()
    else:
        place = {k: i for i, k in enumerate(old_keys)}
        prefix, last = 0, -1
        for k in new_keys:
            i = place.get(k)
            if i is None or i < last:
                break
            prefix, last = prefix + 1, i
        again = [k for k in new_keys[prefix:] if k in place]
        removed = tuple([k for k in old_keys if k not in new] + again)
    changed = {k: new[k] for k in new_keys[:prefix] if new[k] is not old[k]}
    for k in new_keys[prefix:]:
        changed[k] = new[k]
    return changed, removed


def applied(before: Any, change: StateDelta) -> Any:
    """The state :func:`delta` wrote ``change`` for, from the one before it.

    Raises:
      ValueError: ``change`` does not fit ``before`` (another record type, another
        number of fields, a field of another shape): the journal was not written from
        the state it is replayed on.
    """
    cls = type(before)
    name = encoding.record_name(cls)
    if name not in _BY_FIELD:
        raise ValueError(
            f"a mutator state given as a change cannot follow a {cls.__name__} (only "
            f"{sorted(_BY_FIELD)} are journaled so)"
        )
    fields = change.fields
    if type(fields) is not tuple or not _FIRST_FIELDS[name] <= len(fields) <= len(before):
        raise ValueError(
            f"a change of {_count(fields)} fields cannot follow a {cls.__name__} of "
            f"{len(before)} fields"
        )
    fields += (_SAME,) * (len(before) - len(fields))  # (journaled before those fields)
    values = []
    for i, (old, field) in enumerate(zip(before, fields, strict=True)):
        where = f"{cls.__name__}.{cls._fields[i]}"
        if type(field) is not tuple or len(field) > 2:
            raise ValueError(f"{where}: a field's change is (), (value,) or (changed, removed)")
        if len(field) == 0:
            values.append(old)
        elif len(field) == 1:
            values.append(field[0])
        else:
            changed, removed = field
            if type(old) is not dict or type(changed) is not dict or type(removed) is not tuple:
                raise ValueError(
                    f"{where}: a dict's change (a dict and a tuple) needs a dict before it"
                )
            new = dict(old)
            for key in removed:
                if new.pop(key, _MISSING) is _MISSING:
                    raise ValueError(f"{where}: removes the key {key!r}, which it does not hold")
            new.update(changed)
            values.append(new)
    return cls(*values)


def _count(fields: Any) -> str:
    return str(len(fields)) if isinstance(fields, tuple) else "an unknown number of"
