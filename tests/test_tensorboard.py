"""The optional TensorBoard hook writes evaluations and hyperparameters per worker."""

import glob
import math
import os
import struct
import sys

import pytest

from jaxpop.logging import tensorboard


def _events(directory):
    """``[(step, tag, value)]`` of the scalar summaries in a directory's event files.

    Reads the TFRecord framing directly (length, its CRC, data, its CRC) and parses
    each record with tensorboardX's protobuf ``Event``.
    """
    from tensorboardX.proto.event_pb2 import Event

    out = []
    for path in sorted(glob.glob(os.path.join(directory, "events.out.tfevents.*"))):
        with open(path, "rb") as f:
            data = f.read()
        offset = 0
        while offset + 12 <= len(data):
            (length,) = struct.unpack_from("<Q", data, offset)
            if offset + 12 + length + 4 > len(data):
                break  # a torn record: TensorBoard stops reading the file here
            record = data[offset + 12 : offset + 12 + length]
            offset += 12 + length + 4
            event = Event.FromString(record)
            for value in event.summary.value:
                out.append((event.step, value.tag, value.simple_value))
    return out


def test_writes_eval_metrics_and_numeric_hparams_per_worker(tmp_path):
    pytest.importorskip("tensorboardX")
    meta = {"log_lr": -3.0, "opt": {"b1": 0.9}, "name": "adam"}
    pair = tensorboard.writers(tmp_path, 2)
    assert [w.backend for w in pair] == ["tensorboardX"] * 2
    with pair[0] as tb:
        tb.log_eval(10, 0.5, meta, {"accuracy": 0.75})
        tb.log_eval(20, 0.25, {**meta, "log_lr": -4.0})
        tb.log_hparams(20, {"log_lr": -5.0})
    pair[1].log_eval(10, math.inf)
    pair[1].close()
    pair[1].close()  # idempotent
    assert sorted(os.listdir(tmp_path)) == ["worker-0", "worker-1"]
    events = _events(tmp_path / "worker-0")
    assert sorted(events) == sorted(
        [
            (10, "eval/value", 0.5),
            (10, "eval/accuracy", 0.75),
            (10, "hparams/log_lr", -3.0),
            (10, "hparams/opt.b1", pytest.approx(0.9)),
            (20, "eval/value", 0.25),
            (20, "hparams/log_lr", -4.0),
            (20, "hparams/opt.b1", pytest.approx(0.9)),
            (20, "hparams/log_lr", -5.0),
        ]
    )
    assert _events(tmp_path / "worker-1") == [(10, "eval/value", math.inf)]
    with pytest.raises(RuntimeError, match="closed"):
        pair[0].log_eval(30, 0.1)


def test_missing_writer_library_names_the_pip_command(tmp_path, monkeypatch):
    for name in ("tensorboardX", "tensorflow", "flax.metrics.tensorboard"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match="pip install tensorboardX"):
        tensorboard.TensorBoardWriter(tmp_path, 0)
    with pytest.raises(ImportError, match="pip install tensorboardX"):
        tensorboard.available_backend("flax")
    assert not os.listdir(tmp_path)  # nothing created


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="backend"):
        tensorboard.available_backend("wandb")
    with pytest.raises(ValueError, match="worker_id"):
        tensorboard.TensorBoardWriter(tmp_path, -1)


def test_flax_backend_when_tensorflow_is_present(tmp_path):
    pytest.importorskip("tensorflow")
    with tensorboard.TensorBoardWriter(tmp_path, 3, backend="flax") as tb:
        tb.log_eval(5, 1.5, {"lr": 0.1})
    assert glob.glob(str(tmp_path / "worker-3" / "events.out.tfevents.*"))


def test_a_failed_write_raises_in_the_caller_and_later_writes_are_kept(tmp_path, monkeypatch):
    """A full disk killed tensorboardX's writer thread; its queue filled and the next
    calls blocked for good, the training loop with them (hostile test). The write is
    made in the calling thread: the error is raised there, the torn record is cut off
    the file, and the next write goes on in it (a new file each failed call left
    thousands during a full disk)."""
    import errno
    import threading

    pytest.importorskip("tensorboardX")

    writer = tensorboard.TensorBoardWriter(tmp_path, 0)
    writer.log_eval(1, 0.5)

    class FullDisk:  # the second record from now: half of it, then no space
        def __init__(self, file):
            self.file, self.calls = file, 0

        def write(self, data):
            self.calls += 1
            if self.calls == 2:
                self.file.write(data[: len(data) // 2])
                self.file.flush()
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.file.write(data)

        def __getattr__(self, name):  # flush, close, fileno
            return getattr(self.file, name)

    writer._writer._file = FullDisk(writer._writer._file)
    outcome = []

    def loop():
        writer.log_eval(2, 0.75)
        try:
            writer.log_eval(3, 0.25)
        except OSError as e:
            outcome.append(e)
        for step in range(4, 40):  # more than tensorboardX's queue held
            writer.log_eval(step, 0.125)
        writer.close()
        outcome.append("closed")

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "a write blocked"
    assert outcome[0].errno == errno.ENOSPC and outcome[1] == "closed"
    events = _events(tmp_path / "worker-0")
    assert {(1, "eval/value", 0.5), (2, "eval/value", 0.75)} <= set(events)
    assert [e for e in events if e[0] >= 3] == [(s, "eval/value", 0.125) for s in range(4, 40)]
    assert len(glob.glob(str(tmp_path / "worker-0" / "events.out.tfevents.*"))) == 1


def test_hyperparameters_whose_tags_clean_alike_are_both_written(tmp_path):
    # ("lr x" and "lr_x" were both written as hparams/lr_x: one value replaced the other)
    pytest.importorskip("tensorboardX")
    (tb,) = tensorboard.writers(tmp_path, 1)
    with tb:
        tb.log_eval(1, 0.5, {"lr x": 0.1, "lr_x": 0.9})
    assert sorted(_events(tmp_path / "worker-0")) == sorted(
        [
            (1, "eval/value", 0.5),
            (1, f"hparams/lr_x-{_hash('hparams/lr x')}", pytest.approx(0.1)),
            (1, "hparams/lr_x", pytest.approx(0.9)),
        ]
    )


def _hash(name):
    import hashlib

    return hashlib.blake2s(name.encode(), digest_size=4).hexdigest()


def test_an_int_tensorboard_shows_as_another_integer_is_written_with_a_warning(tmp_path, caplog):
    """``log_scalars`` with an int raised AttributeError (``int.is_integer`` exists only
    from Python 3.12): a count such as examples seen was never written."""
    pytest.importorskip("tensorboardX")
    import logging

    with (
        caplog.at_level(logging.WARNING, logger="jaxpop"),
        tensorboard.TensorBoardWriter(tmp_path, 0) as writer,
    ):
        writer.log_scalars(1, {"small": 3})
        writer.log_scalars(2, {"examples_seen": 16777217})
    assert _events(tmp_path / "worker-0") == [(1, "small", 3.0), (2, "examples_seen", 16777216.0)]
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "examples_seen" in warning and "16777217" in warning


def test_a_worker_whose_first_write_meets_a_full_disk_keeps_one_event_file(tmp_path, monkeypatch):
    """At a disk full from a worker's first write, the writer that failed writing its
    file's version record was not kept: each call made another empty event file
    (hostile review: 200 calls, 200 files)."""
    import errno

    pytest.importorskip("tensorboardX")
    full = [True]

    class Disk:  # no byte taken while the disk is full
        def __init__(self, file):
            self.file = file

        def write(self, data):
            if full:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.file.write(data)

        def __getattr__(self, name):  # flush, close, fileno, seek
            return getattr(self.file, name)

    monkeypatch.setattr(tensorboard, "open", lambda *a, **k: Disk(open(*a, **k)), raising=False)
    logger = tensorboard.TensorBoardLogger(tmp_path)
    for step in range(1, 21):
        with pytest.raises(OSError, match=r"No space"):
            logger.log_worker(0, step, 0.5)
    full.clear()
    logger.log_worker(0, 21, 0.25)
    logger.close()
    assert len(glob.glob(str(tmp_path / "worker-0" / "events.out.tfevents.*"))) == 1
    assert (21, "eval/value", 0.25) in _events(tmp_path / "worker-0")
