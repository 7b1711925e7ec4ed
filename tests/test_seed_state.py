"""The seed's run directories: a pickled ``population.state`` is refused, then migrated.

The seed's file is written here the way the seed writes it: ``pickle.dumps`` of
``(active_workers, cache, mutator_state)`` with flax records whose classes live in the
seed's module path (a stand-in module registered in ``sys.modules`` for the test).
"""

from __future__ import annotations

import builtins
import logging
import math
import os
import pickle
import sys
import threading
import time
import types
import warnings

import numpy as np
import pytest

from conftest import noop_mutator
from jaxpop import PopulationController, cli, storage
from jaxpop.mutators import WinnerTakeAllGenetic
from jaxpop.population import Mutate
from jaxpop.records import ActiveWorker, Checkpoint
from jaxpop.storage import seed_state

SEED_MODULE = "learned_optimization.population.population"


@pytest.fixture
def seed():
    """A stand-in for the seed's module: its record classes under their real path."""
    from flax import struct

    names = ["learned_optimization", "learned_optimization.population", SEED_MODULE]
    saved = {n: sys.modules.get(n) for n in names}
    for n in names:
        sys.modules[n] = types.ModuleType(n)
    module = sys.modules[SEED_MODULE]

    @struct.dataclass
    class Checkpoint:  # the seed's field order
        params: object
        meta_params: object
        generation_id: str
        value: object
        parent: object
        step: int
        time: float

    @struct.dataclass
    class ActiveWorker:
        params: object
        meta_params: object
        generation_id: str
        step: int

    class IntKeyDict(dict):
        def keys(self):
            return sorted(super().keys())

    def make_gen_id():
        return "not a record"

    for obj in (Checkpoint, ActiveWorker, IntKeyDict, make_gen_id):
        obj.__module__, obj.__qualname__ = SEED_MODULE, obj.__name__
        setattr(module, obj.__name__, obj)
    yield module
    for n, m in saved.items():
        if m is None:
            sys.modules.pop(n, None)
        else:
            sys.modules[n] = m


def _seed_state(seed, mutator_state=None, meta_extra=None):
    """What the seed's controller pickles after two evaluations each and one exploit."""
    P, t = seed, 1000.0
    cache = {}
    lrs = {"gen-a": 0.1, "gen-b": np.float64(0.2)}
    for g, lr in lrs.items():
        meta = {"lr": lr, **(meta_extra or {})}
        cache[g] = P.IntKeyDict()
        cache[g][0] = P.Checkpoint(None, meta, g, None, None, 0, t)
        for step in (5, 10):  # the seed's set_eval: the checkpoint is its own parent
            value = np.float32(1.0 / step) if g == "gen-a" else 2.0 / step
            cache[g][step] = P.Checkpoint(f"/ckpt/{g}/{step}", meta, g, value, (g, step), step, t)
    for g, lr in (("gen-c", 0.11), ("gen-d", 0.09)):  # copies of gen-a's step 10
        cache[g] = P.IntKeyDict()
        cache[g][10] = P.Checkpoint("/ckpt/gen-a/10", {"lr": lr}, g, None, ("gen-a", 10), 10, t)
    # worker 1 asked with its old generation at step 12: the seed recorded where it was
    cache["gen-b"][12] = P.Checkpoint(
        "/ckpt/gen-b/12", cache["gen-b"][0].meta_params, "gen-b", None, ("gen-b", 12), 12, t
    )
    workers = [
        P.ActiveWorker("/ckpt/gen-a/10", {"lr": 0.11}, "gen-c", np.int64(10)),
        P.ActiveWorker("/ckpt/gen-a/10", {"lr": 0.09}, "gen-d", 10),
    ]
    return workers, cache, mutator_state


def _write_seed_run(path, seed, **kwargs) -> bytes:
    os.makedirs(path, exist_ok=True)
    data = pickle.dumps(_seed_state(seed, **kwargs))
    with open(os.path.join(path, "population.state"), "wb") as f:
        f.write(data)
    return data


def _write_state(path, workers, cache, state) -> None:
    """Writes ``population.state`` holding the seed's ``(workers, cache, state)``."""
    (path / "population.state").write_bytes(pickle.dumps((workers, cache, state)))


def _mutate(meta, key):
    return {"lr": meta["lr"] * 1.1}


def test_a_controller_refuses_a_seed_log_dir_and_says_how_to_migrate(seed, tmp_path):
    _write_seed_run(tmp_path, seed)
    with pytest.raises(storage.SeedStateError, match=r"population\.state") as info:
        PopulationController([{"lr": 0.1}] * 2, noop_mutator(), log_dir=str(tmp_path))
    message = str(info.value)
    assert f"jaxpop migrate-seed-state {tmp_path}" in message and "pickle" in message
    assert os.listdir(tmp_path) == ["population.state"]  # nothing written beside it


def test_load_state_of_a_seed_pickle_says_how_to_migrate(seed, tmp_path):
    # (it said only "not jaxpop-encoded data": helper-278)
    data = _write_seed_run(tmp_path, seed)
    pop = PopulationController([{"lr": 0.1}] * 2, noop_mutator())
    with pytest.raises(ValueError, match="migrate-seed-state"):
        pop.load_state(data)
    with pytest.raises(ValueError, match=r"jaxpop header \(msgpack .*\)$"):
        pop.load_state(b"not a state")


def test_a_migrated_run_resumes_where_the_seed_stopped(seed, tmp_path):
    _write_seed_run(tmp_path, seed)
    done = storage.migrate_seed_state(tmp_path)  # in place: the same log_dir goes on
    assert done.log_dir == str(tmp_path) and done.source == str(tmp_path / "population.state")
    mutator = WinnerTakeAllGenetic(_mutate, steps_per_exploit=5)
    with PopulationController([{"lr": 1.0}] * 2, mutator, log_dir=str(tmp_path)) as c:
        assert c.active_workers == [
            ActiveWorker("/ckpt/gen-a/10", {"lr": 0.11}, "gen-c", 10),
            ActiveWorker("/ckpt/gen-a/10", {"lr": 0.09}, "gen-d", 10),
        ]
        assert type(c.active_workers[0].step) is int
        assert list(c.history) == ["gen-a", "gen-b", "gen-c", "gen-d"]
        assert c.history.num_checkpoints == 9
        a10 = c.history["gen-a"][10]
        assert a10.value == pytest.approx(0.1) and type(a10.value) is float
        assert a10.parent == ("gen-a", 5)  # the seed's self-parent: the previous checkpoint
        assert c.history["gen-a"][0].parent is None
        assert c.history["gen-c"][10].parent == ("gen-a", 10)
        assert c.history["gen-b"][12].parent == ("gen-b", 10)
        assert c.history["gen-b"][0].meta_params["lr"] == np.float64(0.2)
        assert c.state.mutator_state == mutator.init()
        # the run goes on: evaluations, exploits
        for step in (15, 20):
            for i in range(2):
                gen = c.active_workers[i].generation_id
                c.set_eval(i, gen, step, f"/ckpt/{gen}/{step}", 1.0 / (step + i))
        assert len(c.history) > 4
        history = list(c.history.checkpoints())
    with PopulationController([{"lr": 1.0}] * 2, mutator, log_dir=str(tmp_path)) as again:
        assert list(again.history.checkpoints()) == history


def test_migration_into_another_directory_and_from_the_command_line(seed, tmp_path, capsys):
    src, dst = tmp_path / "seed", tmp_path / "jaxpop"
    _write_seed_run(src, seed)
    assert cli.main(["migrate-seed-state", str(src), "--out", str(dst)]) == 0
    out = capsys.readouterr().out
    assert "2 workers, 4 generations, 9 checkpoints" in out and str(dst) in out
    assert os.listdir(src) == ["population.state"]
    assert storage.read_state(dst).history.num_checkpoints == 9
    # a second migration into a run refuses and changes nothing
    before = sorted(os.listdir(dst))
    assert cli.main(["migrate-seed-state", str(src), "--out", str(dst)]) == 1
    assert "already holds a jaxpop run" in capsys.readouterr().err
    assert sorted(os.listdir(dst)) == before
    # the seed's directory itself is still refused (it was migrated elsewhere)
    with pytest.raises(storage.SeedStateError):
        PopulationController([{}] * 2, noop_mutator(), log_dir=str(src))
    assert cli.main(["report", str(src)]) == 1
    assert f"jaxpop migrate-seed-state {src}" in capsys.readouterr().err
    # watching it said "waiting for a run" for ever, with no word of migrating (helper-213)
    watch = ["report", str(src), "--watch", "--interval", "0.2", "--max-iterations", "3"]
    assert cli.main(watch) == 1
    assert f"jaxpop migrate-seed-state {src}" in capsys.readouterr().err


def test_watching_a_seed_run_says_to_migrate_it_and_reports_it_once_migrated(
    seed, tmp_path, capsys
):
    """--watch on a seed folder waited with no word of migrating (helper-213); told at
    once, it goes on watching, and the run a migration in place makes is reported (the
    first fix returned at once: helper-216)."""
    _write_seed_run(tmp_path, seed)

    def migrate_soon():
        time.sleep(0.5)
        storage.migrate_seed_state(tmp_path)

    thread = threading.Thread(target=migrate_soon)
    thread.start()
    out = str(tmp_path.parent / "out")
    watch = ["report", str(tmp_path), "--watch", "--interval", "0.2", "--max-iterations", "15"]
    try:
        assert cli.main([*watch, "--out", out, "--quiet"]) == 0
    finally:
        thread.join()
    assert f"jaxpop migrate-seed-state {tmp_path}" in capsys.readouterr().err
    assert os.path.isfile(os.path.join(out, "summary.json"))


def test_a_migration_refused_for_a_run_that_appeared_keeps_that_runs_record(
    seed, tmp_path, monkeypatch, caplog
):
    """Two migrations of one folder: the one that finds the other's run once it holds the
    lock is refused, and removed the winner's seed-migration.json on its way out (then
    every controller there warned that population.state was not migrated: helper-216)."""
    _write_seed_run(tmp_path, seed)
    refuse = seed_state._refuse_existing_run
    raced = []

    def racing(dst, source):
        refuse(dst, source)
        if not raced:  # another process migrates the folder right after this look
            raced.append(True)
            storage.migrate_seed_state(tmp_path)

    monkeypatch.setattr(seed_state, "_refuse_existing_run", racing)
    with pytest.raises(FileExistsError, match="already holds a jaxpop run"):
        storage.migrate_seed_state(tmp_path)
    record = tmp_path / seed_state.MIGRATION_FILE
    assert record.is_file()
    monkeypatch.undo()
    with caplog.at_level(logging.WARNING):
        PopulationController([{}] * 2, noop_mutator(), log_dir=str(tmp_path)).close()
    assert "not migrated here" not in caplog.text


def test_a_report_error_on_a_run_migrated_in_place_does_not_say_migrate_it(seed, tmp_path, capsys):
    """A folder migrated in place holds population.state and the jaxpop run: every report
    error there said "migrate it first", which then failed (helper-213)."""
    _write_seed_run(tmp_path, seed)
    assert cli.main(["migrate-seed-state", str(tmp_path)]) == 0
    (tmp_path.parent / "a-file").write_text("")
    capsys.readouterr()
    assert cli.main(["report", str(tmp_path), "--out", str(tmp_path.parent / "a-file")]) == 1
    err = capsys.readouterr().err
    assert "jaxpop report: error:" in err and "migrate" not in err
    assert cli.main(["report", str(tmp_path), "--out", str(tmp_path.parent / "out")]) == 0


def test_a_seed_style_mutator_gets_the_seeds_mutator_state_back(seed, tmp_path):
    branch = seed.Checkpoint("/ckpt/gen-a/10", {"lr": 0.1}, "gen-a", 0.1, ("gen-a", 10), 10, 0.0)
    _write_seed_run(tmp_path, seed, mutator_state={"phase": "exploit", "branch": branch})

    class Keep(Mutate):
        def init(self):
            return {"phase": "start", "branch": None}

        def update(self, state, current_workers, cache):
            return state, current_workers

    storage.migrate_seed_state(tmp_path)
    with PopulationController([{}] * 2, Keep(), log_dir=str(tmp_path)) as c:
        state = c.state.mutator_state
        assert state["phase"] == "exploit"
        assert state["branch"] == Checkpoint(
            "/ckpt/gen-a/10", {"lr": 0.1}, "gen-a", 0.1, ("gen-a", 10), 10, 0.0
        )
        c.set_eval(0, "gen-c", 11, None, 1.0)
    with PopulationController([{}] * 2, Keep(), log_dir=str(tmp_path)) as c:
        assert c.state.mutator_state["phase"] == "exploit"  # adopted once, then kept


def test_a_seed_file_changed_after_an_in_place_migration_is_named(seed, tmp_path, caplog):
    _write_seed_run(tmp_path, seed)
    storage.migrate_seed_state(tmp_path)
    with caplog.at_level(logging.WARNING, logger="jaxpop"):
        PopulationController([{}] * 2, noop_mutator(), log_dir=str(tmp_path)).close()
    assert not caplog.records
    _write_seed_run(tmp_path, seed, mutator_state="the seed program went on")
    with caplog.at_level(logging.WARNING, logger="jaxpop"):
        PopulationController([{}] * 2, noop_mutator(), log_dir=str(tmp_path)).close()
    assert "changed since it was migrated" in caplog.text


# -- hostile and damaged files ----------------------------------------------------------
class _Call:
    """Pickles as a call of ``fn(*args)``: what unpickling a hostile file would run."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _hostile_calls(marker):
    import collections

    return {
        "os.system": _Call(os.system, f"touch {marker}"),
        "builtins.eval": _Call(builtins.eval, f"open({str(marker)!r}, 'w').close()"),
        "builtins.getattr": _Call(getattr, "text", "upper"),
        "collections.OrderedDict": _Call(collections.OrderedDict),
        "the seed's make_gen_id": _Call(sys.modules[SEED_MODULE].make_gen_id),
    }


@pytest.mark.parametrize(
    "name",
    [
        "os.system",
        "builtins.eval",
        "builtins.getattr",
        "collections.OrderedDict",
        "the seed's make_gen_id",
    ],
)
def test_a_pickle_naming_any_other_global_is_refused_without_running_it(seed, tmp_path, name):
    src, dst, marker = tmp_path / "seed", tmp_path / "out", tmp_path / "pwned"
    call = _hostile_calls(marker)[name]
    _write_seed_run(src, seed, meta_extra={"evil": call})
    with pytest.raises(storage.SeedStateError, match="refusing it") as info:
        storage.migrate_seed_state(src, dst)
    assert f"{call.fn.__module__}.{call.fn.__name__}" in str(info.value)
    assert not marker.exists() and not dst.exists()
    assert os.listdir(src) == ["population.state"]
    with pytest.raises(storage.SeedStateError, match="refusing it"):
        storage.load_seed_state(src)
    if name in ("os.system", "builtins.eval"):  # the file is hostile indeed
        pickle.loads((src / "population.state").read_bytes())
        assert marker.exists()


@pytest.mark.parametrize("cut", [0, 1, 40, -40, -1])
def test_a_truncated_file_is_a_clear_error_and_nothing_is_written(seed, tmp_path, cut):
    src, dst = tmp_path / "seed", tmp_path / "out"
    data = _write_seed_run(src, seed)
    (src / "population.state").write_bytes(data[:cut] if cut else b"")
    with pytest.raises(storage.SeedStateError, match="truncated or damaged"):
        storage.migrate_seed_state(src, dst)
    assert not dst.exists() and os.listdir(src) == ["population.state"]
    with pytest.raises(storage.SeedStateError, match="truncated or damaged"):
        storage.migrate_seed_state(src)  # in place: nothing written beside it either
    assert os.listdir(src) == ["population.state"]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ({"not": "the seed's tuple"}, "does not hold the seed's"),
        ("extra", "bytes follow"),
        ("set", r"meta_params\['tags'\] is a set"),
        ("object array", r"meta_params\['a'\] is a numpy array or scalar of dtype"),
        # (migrated, the run failed at its first exploit, on every retry: helper-186)
        ("mixed keys", r"\]\.meta_params has a dict whose keys cannot be sorted"),
        # (the message showed the reader's internal object: helper-186)
        ("numpy str id", r"cache\[<a numpy array or scalar of dtype dtype\('<U5'\)"),
        # (the mark of jaxpop's kept generations: its exploit went missing: helper-232)
        ("kept id", r"cache\['gen-c~1'\]: a generation id holding '~' names a kept"),
        # (migrated without a word, then jaxpop report failed on every run: helper-278)
        ("inf time", r"cache\['gen-a'\]\[5\]\.time is not a finite number of seconds"),
        ("nan time", r"cache\['gen-a'\]\[5\]\.time is not a finite number of seconds"),
    ],
)
def test_what_jaxpop_cannot_represent_is_named(seed, tmp_path, content, match):
    src = tmp_path / "seed"
    src.mkdir()
    if content == "extra":
        data = _write_seed_run(src, seed) + b"more"
    elif content == "set":
        data = _write_seed_run(src, seed, meta_extra={"tags": {"a"}})
    elif content == "object array":
        data = _write_seed_run(src, seed, meta_extra={"a": np.array([None, 1])})
    elif content == "mixed keys":
        data = _write_seed_run(src, seed, meta_extra={0: 2})
    elif content == "numpy str id":
        workers, cache, mutator_state = _seed_state(seed)
        cache[np.str_("gen-x")] = cache.pop("gen-c")
        data = pickle.dumps((workers, cache, mutator_state))
    elif content == "kept id":
        workers, cache, mutator_state = _seed_state(seed)
        cache["gen-c~1"] = {10: cache.pop("gen-c")[10].replace(generation_id="gen-c~1")}
        workers[0] = workers[0].replace(generation_id="gen-c~1")
        data = pickle.dumps((workers, cache, mutator_state))
    elif isinstance(content, str) and content.endswith(" time"):
        workers, cache, mutator_state = _seed_state(seed)
        cache["gen-a"][5] = cache["gen-a"][5].replace(time=float(content.split()[0]))
        data = pickle.dumps((workers, cache, mutator_state))
    else:
        data = pickle.dumps(content)
    (src / "population.state").write_bytes(data)
    with pytest.raises(storage.SeedStateError, match=match):
        storage.migrate_seed_state(src)
    assert os.listdir(src) == ["population.state"]


def test_a_seed_file_that_is_no_regular_file_is_refused_without_blocking(tmp_path):
    """A FIFO as population.state hung the migration (and the command) for good, a link
    to /dev/zero read until memory ran out; the controller's own check refused both
    (helper-186)."""
    import threading

    src = tmp_path / "seed"
    src.mkdir()
    os.mkfifo(src / "population.state")
    errors = []

    def migrate():
        try:
            storage.migrate_seed_state(src)
        except Exception as e:
            errors.append(e)

    thread = threading.Thread(target=migrate, daemon=True)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive(), "the migration blocked on a FIFO"
    message = str(errors[0])
    assert isinstance(errors[0], storage.SeedStateError) and "a FIFO" in message
    assert message.count("population.state") == 1 and "jaxpop file" not in message
    os.remove(src / "population.state")
    os.symlink("/dev/zero", src / "population.state")
    with pytest.raises(storage.SeedStateError, match="cannot be migrated"):
        seed_state.load_seed_state(src)


def test_numeric_numpy_arrays_are_read_in_every_layout_and_protocol(seed, tmp_path):
    arrays = {
        "fortran": np.arange(6.0).reshape(2, 3).T,
        "big_endian": np.array([1, 2], dtype=">i4"),
        "empty": np.zeros((0, 3), np.float32),
        "bool": np.array([True, False]),
    }
    for protocol in (3, 4, 5):
        src = tmp_path / str(protocol)
        src.mkdir()
        data = pickle.dumps(_seed_state(seed, meta_extra=arrays), protocol=protocol)
        (src / "population.state").write_bytes(data)
        meta = storage.load_seed_state(src).history["gen-a"][0].meta_params
        for name, array in arrays.items():
            assert meta[name].dtype == array.dtype and np.array_equal(meta[name], array)


# -- bounded work: shared references ----------------------------------------------------
def _laughs(depth):
    x = 0
    for _ in range(depth):
        x = [x, x]
    return x


def _tuple_key_bomb(depth):
    """A pickle of ``{x: 1}`` where ``x = (x, x)`` ``depth`` times: a dict hashes its key,
    2**depth tuples (building it in this process would never end)."""
    x = b"K\x00" + b"".join(b"\x94h" + bytes([i]) + b"\x86" for i in range(depth))
    return b"\x80\x04}" + x + b"K\x01s."


@pytest.mark.parametrize("where", ["mutator state", "params", "extra field", "dict key"])
def test_a_small_file_that_expands_without_bound_is_refused_at_once(seed, tmp_path, where):
    src = tmp_path / "seed"
    src.mkdir()
    laughs = _laughs(60)  # 2**60 values in 2 KB of pickle
    if where == "mutator state":
        data = pickle.dumps(_seed_state(seed, mutator_state=laughs))
    elif where == "params":
        workers, cache, _ = _seed_state(seed)
        cache["gen-a"][5] = cache["gen-a"][5].replace(params=laughs)
        data = pickle.dumps((workers, cache, None))
    elif where == "extra field":  # a refused record whose message shows its fields
        record = seed.Checkpoint(None, None, "g", None, None, 0, 0.0)
        object.__setattr__(record, "bogus", laughs)
        data = pickle.dumps(_seed_state(seed, mutator_state=record))
    else:
        data = _tuple_key_bomb(60)
    assert len(data) < 3000
    (src / "population.state").write_bytes(data)
    started = time.monotonic()
    with pytest.raises(storage.SeedStateError, match="expands to more than"):
        storage.migrate_seed_state(src)
    assert time.monotonic() - started < 5
    assert os.listdir(src) == ["population.state"]


def _late_fill_bomb(depth):
    """A pickle of ``L0 = [L1, L1], L1 = [L2, L2], ...``: ``depth + 1`` empty lists made
    and memoized first, then each filled with references to the next (its size counted
    when it is referred to: before it is filled). ``2**depth`` values in a few bytes."""
    lists = b"".join(b"]q" + bytes([i]) + b"0" for i in range(depth + 1))
    fills = b"".join(
        b"h" + bytes([i]) + b"h" + bytes([i + 1]) + b"ah" + bytes([i + 1]) + b"a0"
        for i in range(depth)
    )
    return b"\x80\x02" + lists + fills + b"h\x00."


def test_a_container_filled_after_it_is_referred_to_is_refused(seed, tmp_path):
    (tmp_path / "population.state").write_bytes(_late_fill_bomb(60))
    started = time.monotonic()
    with pytest.raises(storage.SeedStateError, match="fills a container after referring"):
        storage.migrate_seed_state(tmp_path)
    assert time.monotonic() - started < 5
    assert os.listdir(tmp_path) == ["population.state"]
    x = []
    for _ in range(3):
        x = [x, x]
    assert pickle.loads(_late_fill_bomb(3)) == x  # (what the bomb holds)


@pytest.mark.parametrize("where", ["history", "mutator state"])
def test_a_value_that_holds_itself_is_refused(seed, tmp_path, where):
    workers, cache, mutator_state = _seed_state(seed)
    meta = {"lr": 0.3}
    record = seed.Checkpoint(None, meta, "gen-a", None, None, 0, 0.0)
    meta["self"] = record  # (a cycle through a record)
    if where == "history":
        cache["gen-a"][0] = record
    else:
        mutator_state = {"branch": record}
    (tmp_path / "population.state").write_bytes(pickle.dumps((workers, cache, mutator_state)))
    with pytest.raises(storage.SeedStateError, match="fills a container after referring"):
        storage.migrate_seed_state(tmp_path)
    assert os.listdir(tmp_path) == ["population.state"]


def test_records_nested_past_the_depth_limit_are_refused(seed, tmp_path):
    """A chain of records each in the one above's ``meta_params`` (no cycle) counts its
    depth through the records: refused, not a RecursionError."""
    workers, cache, _ = _seed_state(seed)
    chain = None
    for _ in range(120):
        chain = seed.Checkpoint(None, {"inner": chain}, "gen-x", None, None, 0, 0.0)
    data = pickle.dumps((workers, cache, {"chain": chain}))
    (tmp_path / "population.state").write_bytes(data)
    with pytest.warns(UserWarning, match="nested more than 100 levels"):
        storage.migrate_seed_state(tmp_path)  # (the mutator state is dropped with a warning)
    workers, cache, _ = _seed_state(seed)
    cache["gen-a"][5] = cache["gen-a"][5].replace(meta_params={"inner": chain})
    (tmp_path / "population.state").write_bytes(pickle.dumps((workers, cache, None)))
    with pytest.raises(storage.SeedStateError, match="nested more than 100 levels"):
        storage.load_seed_state(tmp_path)


def test_a_memo_slot_past_the_next_is_refused_before_anything_is_allocated(tmp_path):
    (tmp_path / "population.state").write_bytes(b"\x80\x04Nr\x00\x00\x00\x10.")  # 2**28
    with pytest.raises(storage.SeedStateError, match="memo slot 268435456 of 0"):
        storage.load_seed_state(tmp_path)


def _record_call(*args):
    _record_call.calls.append(args)


_record_call.calls = []


def test_a_class_named_by_an_extension_code_is_refused_even_when_cached(tmp_path):
    """``EXT1`` takes a name from copyreg's registry, and CPython's unpickler from a
    process-wide cache that an ordinary load filled: it never asks ``find_class``."""
    import copyreg

    code = 0xF1
    copyreg.add_extension(__name__, "_record_call", code)
    try:
        pickle.loads(b"\x80\x02\x82" + bytes([code]) + b".")  # a trusted load caches it
        data = b"\x80\x02\x82" + bytes([code]) + b"K\x01\x85R."  # _record_call(1)
        (tmp_path / "population.state").write_bytes(data)
        with pytest.raises(storage.SeedStateError, match="extension code"):
            storage.migrate_seed_state(tmp_path)
    finally:
        copyreg.remove_extension(__name__, "_record_call", code)
        copyreg.clear_extension_cache()
    assert _record_call.calls == []
    assert os.listdir(tmp_path) == ["population.state"]


@pytest.mark.parametrize("step", [-5, 2**63, np.uint64(2**64 - 1)])
@pytest.mark.parametrize("where", ["worker", "checkpoint", "parent", "cache key"])
def test_a_step_a_controller_would_refuse_is_not_migrated(seed, tmp_path, step, where):
    workers, cache, _ = _seed_state(seed)
    if where == "worker":
        workers[1] = workers[1].replace(step=step)
    elif where == "checkpoint":  # (under a cache key of its own step)
        cache["gen-b"] = {step: cache["gen-b"][0].replace(step=step)}
    elif where == "parent":
        cache["gen-c"][10] = cache["gen-c"][10].replace(parent=("gen-a", step))
    else:
        cache["gen-b"][step] = cache["gen-b"].pop(12)
    (tmp_path / "population.state").write_bytes(pickle.dumps((workers, cache, None)))
    with pytest.raises(storage.SeedStateError, match=r"in \[0, 2\*\*63\)"):
        storage.migrate_seed_state(tmp_path)
    assert os.listdir(tmp_path) == ["population.state"]


@pytest.mark.parametrize("where", ["worker", "checkpoint", "cache key"])
def test_steps_are_migrated_or_refused_as_a_controller_takes_them(seed, tmp_path, where):
    """A whole float step (``12.0``: the seed kept what its worker sent, and a controller
    takes it as 12) was refused, so the run could not be migrated; a bool, ``12.5`` or
    NaN are refused, naming where, as a controller refuses them live."""

    def write(step, into):
        workers, cache, _ = _seed_state(seed)
        if where == "worker":
            workers[1] = workers[1].replace(step=step)
        elif where == "checkpoint":
            cache["gen-b"][12] = cache["gen-b"][12].replace(step=step)
        else:
            cache["gen-b"][step] = cache["gen-b"].pop(12)
        into.mkdir()
        (into / "population.state").write_bytes(pickle.dumps((workers, cache, None)))
        return into

    arrays = [] if where == "cache key" else [np.array(12), np.array(12.0)]  # (unhashable)
    for i, step in enumerate([12.0, np.float64(12.0), np.int16(12), *arrays]):
        run = storage.migrate_seed_state(write(step, tmp_path / f"whole{i}"))
        state = storage.read_state(run.log_dir)
        steps = [w.step for w in state.workers] + [c.step for c in state.history.checkpoints()]
        assert all(type(s) is int for s in steps) and 12 in steps
    arrays = [] if where == "cache key" else [np.array(True), np.array(12.5)]
    for i, step in enumerate([True, 12.5, math.nan, math.inf, "12", *arrays]):
        src = write(step, tmp_path / f"refused{i}")
        with pytest.raises(storage.SeedStateError, match="is not an int"):
            storage.migrate_seed_state(src)
        assert os.listdir(src) == ["population.state"]


def test_a_file_that_expands_within_the_budget_is_migrated(seed, tmp_path):
    _write_seed_run(tmp_path, seed, mutator_state=_laughs(10))  # 2**11 values: fine
    storage.migrate_seed_state(tmp_path)
    assert storage.read_state(tmp_path).mutator_state["seed_mutator_state"] == _laughs(10)


def test_error_messages_show_a_bounded_part_of_a_value():
    huge = {"k": [_laughs(60)] * 3, **{i: i for i in range(10**5)}}
    started = time.monotonic()
    text = seed_state._short(seed_state._SeedIntKeyDict(huge))
    assert time.monotonic() - started < 1 and len(text) < 300
    assert seed_state._short(10**5000) == "<an int of 16610 bits>"


# -- a pickle may not change what the reader runs ------------------------------------------
def _global(module, name):
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


@pytest.mark.parametrize(
    ("module", "name"), sorted(seed_state._ALLOWED), ids=lambda x: x.split(".")[-1]
)
def test_a_pickle_cannot_set_attributes_on_what_the_reader_calls(tmp_path, module, name):
    # BUILD with (None, {attribute: value}) on a global: pickle would setattr on it
    target = seed_state._ALLOWED[(module, name)]
    before = dict(vars(target))
    defaults = getattr(target, "__defaults__", None)
    for attribute in ("jaxpop_marker", "__defaults__", "fields", "kind"):
        state = b"N}X" + len(attribute).to_bytes(4, "little") + attribute.encode()
        data = b"\x80\x02" + _global(module, name) + state + b"K\x01\x85s\x86b."
        (tmp_path / "population.state").write_bytes(data)
        with pytest.raises(storage.SeedStateError, match=r"gives a state to something"):
            storage.load_seed_state(tmp_path)
    assert dict(vars(target)) == before
    assert getattr(target, "__defaults__", None) == defaults


@pytest.mark.parametrize("copy", [b"\x88", b"\x89"], ids=["copy", "no copy"])
def test_a_pickle_cannot_change_numpys_dtypes(tmp_path, copy):
    # numpy.dtype("i8", False, copy) given the state of a dtype that holds objects:
    # numpy would then read the ints as pointers
    state = b"(K\x03X\x01\x00\x00\x00<NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK?tb"
    dtype = _global("numpy", "dtype") + b"X\x02\x00\x00\x00i8\x89" + copy + b"\x87R" + state
    (tmp_path / "population.state").write_bytes(b"\x80\x02" + dtype + b".")
    with pytest.raises(storage.SeedStateError, match="a numpy dtype with the state"):
        storage.load_seed_state(tmp_path)
    assert not np.dtype("int64").hasobject and np.dtype("int64").flags == 0
    assert np.arange(3).sum() == 3


# -- what the migration keeps, and what it drops --------------------------------------------
def test_a_mutator_state_jaxpop_cannot_store_is_dropped_with_a_warning(seed, tmp_path, caplog):
    # deliberate: the run itself is intact and jaxpop's mutators never use the seed's state
    _write_seed_run(tmp_path, seed, mutator_state={"seen": {1, 2}, "phase": "explore"})
    with pytest.warns(UserWarning, match=r"mutator state\['seen'\] is a set.*not kept"):
        storage.migrate_seed_state(tmp_path)

    class Keep(Mutate):
        def init(self):
            return {"phase": "start"}

        def update(self, state, current_workers, cache):
            return state, current_workers

    with (
        caplog.at_level(logging.WARNING, logger="jaxpop"),
        PopulationController([{}] * 2, Keep(), log_dir=str(tmp_path)) as c,
    ):
        assert c.state.mutator_state == {"phase": "start"}
        assert c.history.num_checkpoints == 9
    assert "Keep starts from its init() state" in caplog.text


def test_a_value_jaxpop_cannot_store_in_the_records_writes_nothing(seed, tmp_path):
    _write_seed_run(tmp_path, seed, meta_extra={"tags": {"a"}})
    with warnings.catch_warnings(), pytest.raises(storage.SeedStateError, match="is a set"):
        warnings.simplefilter("error")
        storage.migrate_seed_state(tmp_path)
    assert os.listdir(tmp_path) == ["population.state"]


# -- the command line -----------------------------------------------------------------------
def test_migrating_into_a_directory_with_a_journal_and_no_snapshot_is_an_error(
    seed, tmp_path, capsys
):
    src, dst = tmp_path / "seed", tmp_path / "out"
    _write_seed_run(src, seed)
    PopulationController([{}], noop_mutator(), log_dir=str(dst)).close()
    for name in os.listdir(dst):
        if not name.startswith("journal-"):
            os.remove(dst / name)
    before = sorted(os.listdir(dst))
    assert cli.main(["migrate-seed-state", str(src), "--out", str(dst)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("jaxpop migrate-seed-state: error:") and "journal" in err
    assert sorted(os.listdir(dst)) == before  # no lock file left behind


def test_a_migration_that_fails_while_writing_leaves_no_lock_file(seed, tmp_path, monkeypatch):
    src, dst = tmp_path / "seed", tmp_path / "out"
    _write_seed_run(src, seed)

    def fail(self, state):
        raise OSError("disk gone")

    monkeypatch.setattr(seed_state.Store, "start", fail)
    assert cli.main(["migrate-seed-state", str(src), "--out", str(dst)]) == 1
    assert not dst.exists()
    # the folders above it that the migration made go too (the first was left: helper-213)
    nested = tmp_path / "made" / "for" / "it"
    assert cli.main(["migrate-seed-state", str(src), "--out", str(nested)]) == 1
    assert not (tmp_path / "made").exists()
    dst.mkdir()
    assert cli.main(["migrate-seed-state", str(src), "--out", str(dst)]) == 1
    assert os.listdir(dst) == []


@pytest.mark.parametrize(
    "failing",
    [
        "folder fsync after the snapshot",
        "seed-migration.json",
        "folder fsync after seed-migration.json",
    ],
)
def test_a_migration_that_fails_late_leaves_nothing_and_can_be_run_again(
    seed, tmp_path, monkeypatch, failing
):
    """A failure after the snapshot was renamed into place, or while writing the
    migration record (before or after its rename: the record was left then, helper-213),
    removes the run the call started: a second try migrates."""
    from jaxpop.storage import store

    _write_seed_run(tmp_path, seed)
    if failing == "folder fsync after seed-migration.json":
        write_atomic = seed_state.write_atomic

        def fail(path, data, **kwargs):
            write_atomic(path, data, **kwargs)
            raise OSError(5, "I/O error")

        monkeypatch.setattr(seed_state, "write_atomic", fail)
    elif failing == "seed-migration.json":

        def fail(path, data, **kwargs):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(seed_state, "write_atomic", fail)
    else:
        write_snapshot = store._write_snapshot

        def fail(*args, **kwargs):
            write_snapshot(*args, **kwargs)
            raise OSError(5, "I/O error")

        monkeypatch.setattr(store, "_write_snapshot", fail)
    with pytest.raises(OSError):
        storage.migrate_seed_state(tmp_path)
    assert os.listdir(tmp_path) == ["population.state"]
    monkeypatch.undo()
    storage.migrate_seed_state(tmp_path)
    assert storage.read_state(tmp_path).history.num_checkpoints == 9


def test_a_destination_holding_another_seed_run_is_refused(seed, tmp_path):
    src, dst = tmp_path / "seed", tmp_path / "other"
    _write_seed_run(src, seed)
    other = _write_seed_run(dst, seed, mutator_state="another run")
    with pytest.raises(FileExistsError, match="another seed run"):
        storage.migrate_seed_state(src, dst)
    assert os.listdir(dst) == ["population.state"]
    assert (dst / "population.state").read_bytes() == other
    storage.migrate_seed_state(dst / "population.state", dst)  # (its own: in place)


def test_values_stored_as_numpy_arrays_are_migrated_as_set_eval_takes_them(seed, tmp_path):
    """A seed run whose values are 0-d or one-element numpy arrays (what a jitted loss
    gives) is migrated, each value as the float a live ``set_eval`` records; an array
    of several elements is refused by name."""
    workers, cache, state = _seed_state(seed)
    cache["gen-a"][5] = cache["gen-a"][5].replace(value=np.array(0.4))
    cache["gen-b"][5] = cache["gen-b"][5].replace(value=np.array([0.2], np.float32))
    _write_state(tmp_path, workers, cache, state)
    history = storage.load_seed_state(tmp_path).history
    assert history["gen-a"][5].value == 0.4
    assert history["gen-b"][5].value == float(np.float32(0.2))
    assert type(history["gen-a"][5].value) is float
    cache["gen-b"][5] = cache["gen-b"][5].replace(value=np.array([0.2, 0.3]))
    _write_state(tmp_path, workers, cache, state)
    with pytest.raises(storage.SeedStateError, match=r"gen-b.*value"):
        storage.load_seed_state(tmp_path)


def test_jax_arrays_are_read_as_numpy_arrays(seed, tmp_path):
    """The seed's own example gives set_eval a jitted loss, a jax array; the reader
    refused the file, saying the seed never holds one (review)."""
    import jax.numpy as jnp

    workers, cache, state = _seed_state(seed)
    cache["gen-a"][5] = cache["gen-a"][5].replace(value=jnp.float32(0.25))
    meta = {"lr": jnp.asarray([0.1, 0.2]), "steps": jnp.int32(7)}
    cache["gen-e"] = seed.IntKeyDict({0: seed.Checkpoint(None, meta, "gen-e", None, None, 0, 1.0)})
    _write_state(tmp_path, workers, cache, state)
    history = storage.load_seed_state(tmp_path).history
    assert history["gen-a"][5].value == 0.25 and type(history["gen-a"][5].value) is float
    lr, steps = history.meta_params("gen-e")["lr"], history.meta_params("gen-e")["steps"]
    assert type(lr) is np.ndarray and lr.dtype == np.float32
    np.testing.assert_array_equal(lr, np.float32([0.1, 0.2]))
    assert steps.dtype == np.int32 and steps == 7


def test_an_object_array_in_the_mutator_state_is_dropped_with_it(seed, tmp_path):
    """It failed the whole migration while the reader was still unpickling, where a value
    jaxpop cannot store in the mutator state drops that state with a warning (review)."""
    _write_seed_run(tmp_path, seed, mutator_state={"a": np.array([None, 1])})
    with pytest.warns(UserWarning, match=r"mutator state\['a'\] is a numpy array"):
        state = storage.load_seed_state(tmp_path)
    assert state.history.num_checkpoints == 9


def test_a_worker_with_other_hyperparameters_than_its_generation_goes_on_in_its_own(seed, tmp_path):
    """A seed Mutate could send a worker other hyperparameters than its generation's: the
    history then recorded the generation's for what it trained with others (review)."""
    workers, cache, state = _seed_state(seed)
    workers[1] = seed.ActiveWorker("/ckpt/gen-b/10", {"lr": 0.5}, "gen-b", 10)
    _write_state(tmp_path, workers, cache, state)
    with pytest.warns(UserWarning, match=r"active_workers\[1\] holds the hyperparameters"):
        storage.migrate_seed_state(tmp_path, seed=0)
    with PopulationController([{}] * 2, noop_mutator(), log_dir=str(tmp_path)) as c:
        worker = c.active_workers[1]
        assert worker.meta_params == {"lr": 0.5} and worker.generation_id != "gen-b"
        assert c.history.branch_point(worker.generation_id) == ("gen-b", 10)
        c.set_eval(1, worker.generation_id, 15, "/ckpt/15", 0.05)
        assert c.history[worker.generation_id][15].meta_params == {"lr": 0.5}
        assert c.active_workers[0].generation_id == "gen-c"  # the others as they were


def test_the_migration_record_is_written_before_the_run(seed, tmp_path, monkeypatch):
    """Written after the snapshot, a migration killed between the two left a complete
    run that a controller then said was 'not migrated here' (review)."""
    _write_seed_run(tmp_path, seed)
    start, seen = seed_state.Store.start, []

    def start_after_record(self, state, **kwargs):
        seen.append(os.path.exists(tmp_path / seed_state.MIGRATION_FILE))
        return start(self, state, **kwargs)

    monkeypatch.setattr(seed_state.Store, "start", start_after_record)
    storage.migrate_seed_state(tmp_path)
    assert seen == [True]


def test_a_bad_seed_is_a_usage_error_not_the_files(seed, tmp_path, capsys):
    _write_seed_run(tmp_path, seed)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["migrate-seed-state", str(tmp_path), "--seed", str(10**23)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "argument --seed: seed must be an int" in err and "population.state" not in err
    with pytest.raises(ValueError, match=r"^seed must be an int"):
        storage.migrate_seed_state(tmp_path, seed=-(2**40))
    assert os.listdir(tmp_path) == ["population.state"]


class _StatedScalar:
    """Pickles as numpy's scalar of an object dtype, then a state for what that made."""

    def __init__(self, state):
        self.state = state

    def __reduce__(self):
        return np.float64(0).__reduce__()[0], (np.dtype("O"), b"\0" * 8), self.state


def test_a_refused_value_takes_no_state_from_the_file(seed, tmp_path):
    """What an object-dtype scalar is read as took any state a BUILD gave it, its
    message included: a 68 KB file made a 188 MB error message (review)."""
    _write_seed_run(tmp_path, seed, meta_extra={"x": _StatedScalar({"why": ["x" * 4096] * 64})})
    with pytest.raises(storage.SeedStateError, match="a state given to a refused value") as e:
        storage.migrate_seed_state(tmp_path)
    assert len(str(e.value)) < 2000
    assert os.listdir(tmp_path) == ["population.state"]


def test_a_migration_that_stopped_before_its_run_is_refused_not_started_afresh(
    seed, tmp_path, monkeypatch
):
    """Killed between the migration record and the snapshot, a migration into another
    directory left the record alone there, and a controller started a fresh run beside
    it (review): it is refused until the migration is run again."""
    src, dst = tmp_path / "seed", tmp_path / "out"
    _write_seed_run(src, seed)
    dst.mkdir()
    (dst / seed_state.MIGRATION_FILE).write_text("{}")  # what such a kill leaves
    with pytest.raises(storage.SeedStateError, match=r"a migration into it did not finish"):
        PopulationController([{}] * 2, noop_mutator(), log_dir=str(dst))
    assert os.listdir(dst) == [seed_state.MIGRATION_FILE]
    storage.migrate_seed_state(src, dst)
    with PopulationController([{}] * 2, noop_mutator(), log_dir=str(dst)) as c:
        assert c.history.num_checkpoints == 9


def test_a_fixed_schedule_sends_a_copied_worker_back_to_its_own_hyperparameters(seed, tmp_path):
    """A seed PBT run (gen-c, lr 0.11, copied from gen-a's step 10, lr 0.1) resumed with a
    FixedSchedule: a worker sent back before its first point got gen-a's 0.1, the root
    of its lineage, which it never had there (review)."""
    from jaxpop.mutators import FixedSchedule

    _write_seed_run(tmp_path, seed)
    storage.migrate_seed_state(tmp_path)
    with PopulationController(
        [{}] * 2, FixedSchedule({20: {"lr": 0.01}}), log_dir=str(tmp_path)
    ) as c:
        c.set_eval(0, "gen-c", 15, "c15", 0.5)
        new = c.set_eval_and_ask(0, "gen-c", 20, "c20", 0.4)
        assert new.meta_params == {"lr": 0.01}
        back = c.checkpoint_missing(0, new.generation_id, 20, exists=lambda p: p != "c20")
        assert (back.step, back.params, back.meta_params) == (15, "c15", {"lr": 0.11})


@pytest.mark.parametrize(
    ("worker", "parent"),
    [
        # other params than its step's checkpoint: a start at its parent's step stands for
        # the parent's params, so reporting its own missing also lost the parent's
        ((1, "/ckpt/elsewhere", "gen-b", 10), ("gen-b", 5)),
        # at a copy's start with other params: its new generation became a root (lineage
        # cut: checkpoint_missing then sent it to a fresh start)
        ((0, "/ckpt/elsewhere", "gen-c", 10), ("gen-a", 5)),
        # before its generation's start, with that start's params: a parent at a later step
        ((0, "/ckpt/gen-a/10", "gen-c", 3), ("gen-a", 0)),
    ],
)
def test_a_migrated_worker_s_own_generation_descends_from_its_lineage_before_it(
    seed, tmp_path, worker, parent
):
    """The new generation of a worker whose hyperparameters are not its generation's
    starts from the newest checkpoint of its lineage before its step, or at it holding
    its params (reviews)."""
    i, params, gen, step = worker
    workers, cache, state = _seed_state(seed)
    workers[i] = seed.ActiveWorker(params, {"lr": 0.5}, gen, step)
    _write_state(tmp_path, workers, cache, state)
    with pytest.warns(UserWarning, match=rf"active_workers\[{i}\]"):
        migrated = storage.load_seed_state(tmp_path, seed=0)
    assert migrated.history.branch_point(migrated.workers[i].generation_id) == parent


def test_a_step_the_seed_recorded_with_a_worker_s_hyperparameters_takes_its_generation_s(
    seed, tmp_path
):
    """The seed's ask on an older generation records the hyperparameters the worker
    passed (None in its quick start): migrated, the generation's history said None for
    a generation that trained with others (review)."""
    workers, cache, state = _seed_state(seed)
    cache["gen-b"][12] = seed.Checkpoint(
        "/ckpt/gen-b/12", None, "gen-b", None, ("gen-b", 12), 12, 1.0
    )
    _write_state(tmp_path, workers, cache, state)
    with pytest.warns(
        UserWarning, match=r"cache\['gen-b'\] records other hyperparameters at steps \[12\]"
    ):
        storage.migrate_seed_state(tmp_path, seed=0)
    with PopulationController([{}] * 2, noop_mutator(), log_dir=str(tmp_path)) as c:
        assert c.history["gen-b"][12].meta_params == {"lr": 0.2}
        assert c.history.meta_params("gen-b") == {"lr": 0.2}
        assert [w.generation_id for w in c.active_workers] == ["gen-c", "gen-d"]


def test_two_workers_on_one_generation_go_on_in_generations_of_their_own(seed, tmp_path):
    """The seed let two workers on one generation overwrite each other's reports; jaxpop
    refuses that of a mutator, and a migrated run had it (review): the second goes on in
    a generation of its own, from the checkpoint it holds."""
    workers, cache, state = _seed_state(seed)
    workers[1] = seed.ActiveWorker("/ckpt/gen-a/10", {"lr": 0.11}, "gen-c", 10)
    _write_state(tmp_path, workers, cache, state)
    with pytest.warns(UserWarning, match=r"active_workers\[1\] is on generation 'gen-c', which "):
        storage.migrate_seed_state(tmp_path, seed=0)
    with PopulationController([{}] * 2, noop_mutator(), log_dir=str(tmp_path)) as c:
        first, second = c.active_workers
        assert first.generation_id == "gen-c" and second.generation_id != "gen-c"
        assert second.meta_params == {"lr": 0.11} and second.step == 10
        assert c.history.branch_point(second.generation_id) == ("gen-c", 10)
        c.set_eval(0, "gen-c", 15, "/p0/15", 0.5)
        c.set_eval(1, second.generation_id, 15, "/p1/15", 0.7)
        assert c.history["gen-c"][15].params == "/p0/15"
        assert c.history[second.generation_id][15].params == "/p1/15"


def test_a_worker_before_its_generation_s_first_checkpoint_goes_on_in_its_own(seed, tmp_path):
    """Its reports would be dropped as stale until it passed the start (the live API
    refuses such an assignment); it goes on in a generation of its own, from its
    lineage before its step (reviews)."""
    workers, cache, state = _seed_state(seed)
    workers[0] = seed.ActiveWorker("/x", {"lr": 0.11}, "gen-c", 3)
    _write_state(tmp_path, workers, cache, state)
    with pytest.warns(UserWarning, match=r"active_workers\[0\] is at step 3 .*first checkpoint"):
        migrated = storage.load_seed_state(tmp_path, seed=0)
    worker = migrated.workers[0]
    assert worker.generation_id != "gen-c" and worker.step == 3 and worker.params == "/x"
    assert migrated.history.branch_point(worker.generation_id) == ("gen-a", 0)


def test_of_two_workers_on_one_generation_the_one_whose_report_it_holds_keeps_it(seed, tmp_path):
    """The first worker kept the generation whose checkpoint at its step held the other's
    report: ranked by the other's score, copied as the other's params (review)."""
    workers, cache, state = _seed_state(seed)
    cache["gen-c"][15] = seed.Checkpoint(
        "/p1/15", {"lr": 0.11}, "gen-c", 0.3, ("gen-c", 15), 15, 1.0
    )
    workers[0] = seed.ActiveWorker("/p0/15", {"lr": 0.11}, "gen-c", 15)
    workers[1] = seed.ActiveWorker("/p1/15", {"lr": 0.11}, "gen-c", 15)
    _write_state(tmp_path, workers, cache, state)
    with pytest.warns(
        UserWarning, match=r"active_workers\[0\] is on generation 'gen-c', .* other's\)"
    ):
        migrated = storage.load_seed_state(tmp_path, seed=0)
    first, second = migrated.workers
    assert second.generation_id == "gen-c" and first.generation_id != "gen-c"
    assert migrated.history.branch_point(first.generation_id) == ("gen-c", 10)
    assert migrated.history[first.generation_id][15].params == "/p0/15"


def test_a_destination_through_a_missing_folder_and_dotdot_is_the_folder_store_writes(
    seed, tmp_path
):
    """Store takes "n4/../n5/out" as "n5/out" (made without n4); the migration's record
    and lock went through the missing n4: a FileNotFoundError, and a lock left (review)."""
    _write_seed_run(tmp_path / "src", seed)
    dst = os.path.join(tmp_path, "n4", "..", "n5", "out")
    done = storage.migrate_seed_state(tmp_path / "src", dst, seed=0)
    assert done.log_dir == dst and not (tmp_path / "n4").exists()
    assert seed_state.MIGRATION_FILE in os.listdir(tmp_path / "n5" / "out")
    with PopulationController([{}] * 2, noop_mutator(), log_dir=str(tmp_path / "n5" / "out")) as c:
        assert c.history.num_checkpoints == done.state.history.num_checkpoints
