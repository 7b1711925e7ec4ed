"""Durable controller state: an append-only journal of changes plus occasional snapshots.

A controller created with a ``log_dir`` journals every state-changing call there before
the call returns, and a controller created later on the same ``log_dir`` resumes the run
exactly, losing nothing that was acknowledged. ``docs/storage.md`` describes the files,
their format, how damage is told from a torn write, and what happens when a write fails.

* :class:`Store` -- the files of one ``log_dir`` (what a controller writes through).
* :func:`read_state` -- read a possibly live ``log_dir`` without writing (reports).
* :func:`state_to_plain` / :func:`state_from_plain` -- a state as checked plain data.
* :func:`migrate_seed_state` -- turn learned_optimization's pickled ``population.state``
  into a jaxpop ``log_dir``, reading it without running anything from it.
"""

from jaxpop.storage.frames import MAX_RECORD_BYTES, CorruptLogError, TornRecordWarning
from jaxpop.storage.plain import state_from_plain, state_to_plain
from jaxpop.storage.seed_state import (
    SEED_STATE_FILE,
    SeedMigration,
    SeedStateError,
    load_seed_state,
    migrate_seed_state,
)
from jaxpop.storage.store import (
    STORAGE_VERSION,
    Durability,
    JournalWriteError,
    LogDirDeletedError,
    LogDirInUseError,
    RunMismatchError,
    Store,
    SupersededError,
    check_compact_after,
    check_durability,
    read_state,
)

__all__ = [
    "MAX_RECORD_BYTES",
    "SEED_STATE_FILE",
    "STORAGE_VERSION",
    "CorruptLogError",
    "Durability",
    "JournalWriteError",
    "LogDirInUseError",
    "LogDirDeletedError",
    "RunMismatchError",
    "SeedMigration",
    "SeedStateError",
    "Store",
    "SupersededError",
    "TornRecordWarning",
    "check_compact_after",
    "check_durability",
    "load_seed_state",
    "migrate_seed_state",
    "read_state",
    "state_from_plain",
    "state_to_plain",
]
