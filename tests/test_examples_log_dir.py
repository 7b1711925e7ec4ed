"""Each example refuses a --log-dir that would nest a second run, or is no folder."""

import importlib.util
import os

import pytest

from examples.complex_cnn import train as complex_cnn
from examples.log_dirs import log_dir_problem
from examples.rl import train as rl
from examples.simple_cnn import train as simple_cnn
from examples.synthetic import train as synthetic
from examples.vectorized import train as vectorized
from jaxpop import PopulationController
from jaxpop.mutators.winner_take_all_genetic import WinnerTakeAllGenetic


def _run(log_dir):
    """A run written by a controller into ``log_dir`` itself."""
    mutator = WinnerTakeAllGenetic(lambda meta, key: meta, steps_per_exploit=10)
    with PopulationController([{"log_lr": -3.0}], mutator, str(log_dir)):
        pass
    return log_dir


def _mains():
    """Each example's command line, to the point where it checks --log-dir."""
    yield simple_cnn.main
    yield complex_cnn.main
    yield vectorized.main
    yield lambda argv: rl.parse([a.replace("--log-dir", "--logdir") for a in argv])
    if importlib.util.find_spec("ray") is not None:
        from examples.ray import train as ray_train

        yield ray_train.main


def _refused(main, argv, capsys):
    with pytest.raises(SystemExit) as refused:
        main(argv)
    assert refused.value.code == 2
    return capsys.readouterr().err


def test_a_run_directory_is_refused_as_the_log_dir_of_an_example_that_nests_its_run(
    tmp_path, capsys
):
    # a CNN example on the synthetic example's --log-dir, or on the population/ folder
    # `jaxpop report` prints, nested its run inside; the report showed the other run
    synthetic_run = _run(tmp_path / "synthetic")
    example = tmp_path / "example"
    (example / "params").mkdir(parents=True)
    population = _run(example / "population")
    before = {p: sorted(os.listdir(p)) for p in (synthetic_run, example, population)}
    for main in _mains():
        err = _refused(main, ["--log-dir", str(synthetic_run)], capsys)
        assert "is itself a jaxpop run" in err and "use another --log-dir" in err
        err = _refused(main, ["--log-dir", str(population)], capsys)
        assert f"pass its --log-dir, {example}, to resume that run" in err
    assert {p: sorted(os.listdir(p)) for p in before} == before  # nothing written
    # the example's own --log-dir (its run below) is resumed, not refused
    assert log_dir_problem(str(example)) is None
    assert log_dir_problem(str(tmp_path / "new")) is None


def test_the_synthetic_example_refuses_a_folder_that_holds_a_run_below(tmp_path, capsys):
    # its run went beside a CNN example's: the report of the folder showed only its own
    example = tmp_path / "example"
    _run(example / "population")
    err = _refused(synthetic.main, ["--log-dir", str(example)], capsys)
    assert f"holds a run in {example / 'population'}" in err
    assert sorted(os.listdir(example)) == ["population"]
    assert log_dir_problem(str(_run(tmp_path / "own")), run_below=False) is None  # resumed
    # ... and one that holds several runs below (taken as "nothing to tell": helper-249)
    _run(example / "other")
    err = _refused(synthetic.main, ["--log-dir", str(example)], capsys)
    assert "holds several runs" in err
    assert log_dir_problem(str(example)) is None  # (a CNN example's run goes below them)


def test_a_log_dir_below_a_file_or_holding_a_file_for_its_run_is_refused(tmp_path):
    # (a NotADirectoryError or FileExistsError traceback from the RL example, helper-319)
    (tmp_path / "afile").write_text("x")
    below = log_dir_problem(str(tmp_path / "afile" / "sub" / "run"))
    assert "which is not a folder: pass a folder" in below
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "population").write_text("x")
    assert "holds population, which is not a folder" in log_dir_problem(str(tmp_path / "run"))
    assert log_dir_problem(str(tmp_path / "run"), run_below=False) is None  # (not its own)
    assert log_dir_problem(str(tmp_path / "new" / "run")) is None
    # params: only an example that keeps them there (the RL example does not); a link
    # to nothing, on the way or as the log dir, is no folder either
    (tmp_path / "rl").mkdir()
    (tmp_path / "rl" / "params").write_text("x")
    assert log_dir_problem(str(tmp_path / "rl")) is None
    assert "holds params" in log_dir_problem(str(tmp_path / "rl"), params=True)
    (tmp_path / "gone").symlink_to(tmp_path / "nothing")
    assert "a link to nothing" in log_dir_problem(str(tmp_path / "gone"))
    assert "not a folder" in log_dir_problem(str(tmp_path / "gone" / "run"))


@pytest.mark.parametrize("which", ["empty", "file"])
def test_an_empty_log_dir_or_a_file_is_a_usage_error(which, tmp_path, capsys, monkeypatch):
    # "" wrote params/ and population/ into the current directory; a file ended in a
    # bare NotADirectoryError traceback
    monkeypatch.chdir(tmp_path)
    path = ""
    if which == "file":
        (tmp_path / "a_file").write_text("")
        path = "a_file"
    for main in [*_mains(), synthetic.main]:
        err = _refused(main, ["--log-dir", path], capsys)
        expected = "an empty path names no folder" if which == "empty" else "is a file"
        assert expected in err
    assert sorted(os.listdir(tmp_path)) == ([] if which == "empty" else ["a_file"])


@pytest.mark.parametrize("name", ["run[lr=0.1]", "a\\b"])
def test_a_log_dir_orbax_cannot_restore_from_is_a_usage_error_before_anything_is_written(
    tmp_path, name, capsys
):
    # the CNN examples made the run's folder, then raised ParamStore's ValueError as a
    # traceback (the vectorized one left a lock file behind)
    log_dir = tmp_path / name
    for main in (simple_cnn.main, complex_cnn.main, vectorized.main):
        assert "ParamStore's directory" in _refused(main, ["--log-dir", str(log_dir)], capsys)
    assert not log_dir.exists()
