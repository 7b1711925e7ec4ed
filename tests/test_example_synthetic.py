"""The synthetic example (``python -m examples.synthetic``) finds the hyperparameter."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `examples` is a top-level package of the repo, not installed
    sys.path.insert(0, str(ROOT))

from examples.synthetic import train  # noqa: E402


def test_main_finds_the_target_in_process(capsys):
    result = train.main(["--steps", "400", "--seed", "1", "--no-progress"])
    assert abs(result["target"] - train.OPTIMUM) < 0.5
    assert abs(result["target"] - train.OPTIMUM) < abs(train.START - train.OPTIMUM) / 4
    assert result["final_loss"] < result["initial_loss"] / 100
    assert result["best_loss"] < 0.01
    # 1 initial generation + 2 mutated branches per cycle (the centre continues its
    # generation); 400 steps = 8 cycles of 50 (exploit 20, then centre, pos, neg 10 each)
    assert result["generations"] == 1 + 2 * 8
    assert result["checkpoints"] >= result["generations"]
    assert result["compilations"] == 1  # a new target never recompiles the train step
    out = capsys.readouterr().out
    assert f"found target = {result['target']:.4f}" in out


def test_python_dash_m_runs_from_the_repo_root():
    proc = subprocess.run(
        [sys.executable, "-m", "examples.synthetic", "--no-progress", "--steps", "300"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    match = re.search(r"^found target = (-?[\d.]+)", proc.stdout, re.MULTILINE)
    assert match, proc.stdout
    assert abs(float(match.group(1)) - 2.0) < 0.5
    assert re.search(
        r"^controller\.history: \d+ generations, \d+ checkpoints", proc.stdout, re.MULTILINE
    )
    assert "%|" not in proc.stderr  # --no-progress: no progress bar


def test_synthetic_writes_a_loadable_history(tmp_path):
    from jaxpop import PopulationController
    from jaxpop.mutators import BranchingSingleMachine

    result = train.main(["--steps", "200", "--no-progress", "--log-dir", str(tmp_path)])
    mutator = BranchingSingleMachine(train.mutate_fn, train.EXPLOIT_STEPS, train.EXPLORE_STEPS)
    with PopulationController([{"target": 0.0}], mutator, tmp_path) as pop:
        assert pop.history.num_checkpoints == result["checkpoints"]


def test_both_synthetic_examples_share_their_options_and_reject_bad_steps(capsys):
    from examples.synthetic import replay

    for module, extra in ((train, ["--log-dir", "x"]), (replay, ["--export", "x"])):
        args = module.parse_args(["--steps", "7", "--seed", "3", "--no-progress", *extra])
        assert (args.steps, args.seed, args.no_progress) == (7, 3, True)
        with pytest.raises(SystemExit) as info:
            module.parse_args(["--steps", "0"])
        assert info.value.code == 2
        assert "--steps: must be positive, got 0" in capsys.readouterr().err
        with pytest.raises(SystemExit):  # (it named an internal function: helper-218)
            module.parse_args(["--steps", "1e3"])
        assert "--steps: not a whole number: '1e3'" in capsys.readouterr().err
    # fewer steps than the first evaluation: nothing to replay (from_lineage's error)
    with pytest.raises(SystemExit):
        replay.parse_args(["--steps", "3"])
    assert "--steps must be at least 5" in capsys.readouterr().err


def test_the_loop_waits_while_held_and_stops_when_finished(monkeypatch, capsys):
    import functools

    from jaxpop import PopulationController, StopWhen

    plain = train.main(["--steps", "200", "--seed", "1", "--no-progress"])
    assert plain["steps_run"] == 200 and plain["status"] == "active"

    class Holding(PopulationController):
        """Holds the worker at step 50 for three asks, as a synchronous round would."""

        held = 0

        def maybe_get_worker_data(self, worker_id, generation_id, step, params, meta):
            reply = super().maybe_get_worker_data(worker_id, generation_id, step, params, meta)
            if reply is None and step == 50 and Holding.held < 3:
                Holding.held += 1
                return self.active_workers[worker_id].replace(status="waiting")
            return reply

    monkeypatch.setattr(train.pop_mod, "PopulationController", Holding)
    held = train.main(["--steps", "200", "--seed", "1", "--no-progress"])
    assert Holding.held == 3  # it asked again (without training) until let go
    assert held == plain  # waiting changed nothing else

    budget = functools.partial(PopulationController, stop_when=StopWhen(step=100))
    monkeypatch.setattr(train.pop_mod, "PopulationController", budget)
    stopped = train.main(["--steps", "400", "--seed", "1", "--no-progress"])
    assert stopped["status"] == "finished"
    assert stopped["steps_run"] < 200  # told to stop once it reported step 100: not 400
    assert "found target" in capsys.readouterr().out
