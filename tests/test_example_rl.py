"""The RL example (``python -m examples.rl``): PPO agents on CartPole, vectorized, with PBT."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

# (a mark, not importorskip: gymnax is imported only by the test process that runs these)
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("gymnax") is None,
    reason="the RL example needs gymnax: pip install -e '.[rl]'",
)

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `examples` is a top-level package of the repo, not installed
    sys.path.insert(0, str(ROOT))

from jaxpop import report, storage  # noqa: E402
from jaxpop import vectorized as vz  # noqa: E402
from jaxpop.keys import root_key  # noqa: E402

# tiny: 4 agents, 10 PPO updates of 16 envs x 32 steps per round, 4 rounds; half copy
MEMBERS, INTERVAL, TOTAL, EVAL_EPISODES = 4, 5120, 20480, 8
ARGV = ["--members", str(MEMBERS), "--interval", str(INTERVAL), "--total-steps", str(TOTAL)]
ARGV += ["--eval-episodes", str(EVAL_EPISODES), "--quantile", "0.5", "--seed", "0"]
ARGV += ["--fast-compile", "--quiet"]


@pytest.fixture(scope="module")
def train():
    """``examples.rl.train`` (it imports gymnax)."""
    from examples.rl import train

    return train


def _population(train):
    """The example's compiled functions for ARGV (shared with the run below)."""
    return train.population(
        "CartPole-v1", MEMBERS, 10, quantile=0.5, eval_episodes=EVAL_EPISODES, fast_compile=True
    )


@pytest.fixture(scope="module")
def run(train, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    logdir = tmp_path_factory.mktemp("rl")
    return train.main([*ARGV, "--logdir", str(logdir)]), logdir


def test_a_short_run_learns_cartpole_and_reports_finite_returns(run):
    summary, logdir = run
    assert summary["env_steps"] == TOTAL and summary["rounds"] == TOTAL // INTERVAL
    assert json.loads((logdir / "summary.json").read_text()) == summary  # (--quiet too)
    returns = [m["eval_return"] for m in summary["members"]]
    assert all(math.isfinite(r) for r in returns)
    assert all(math.isfinite(m["train_return"]) for m in summary["members"])
    # the random initial policies balance the pole for a few dozen steps at best
    assert summary["mean_return"] > max(2 * summary["initial_return"], 100.0)
    assert summary["exploit_events"] >= 1


def test_the_lineage_is_written_and_jaxpop_report_reads_it(run):
    summary, logdir = run
    state = storage.read_state(logdir / "population")
    assert state.population_size == MEMBERS and state.history.mode == "max"
    # one evaluation per agent and round, plus one root per agent and one per copy
    expected = MEMBERS * (1 + summary["rounds"]) + summary["exploit_events"]
    assert state.history.num_checkpoints == expected
    built = report.load(logdir)
    assert len(built.exploits) == summary["exploit_events"]
    assert report.summary(built)["best"]["value"] == pytest.approx(
        max(m["train_return"] for m in summary["members"])
    )
    assert {"learning_rate", "ent_coef", "clip_eps", "gae_lambda"} <= set(
        state.workers[0].meta_params
    )


def test_the_agent_key_is_the_one_key_leaf_exploit_explore_refreshes(train):
    fns = _population(train)
    pop = fns.init(root_key(0))
    leaves = jax.tree_util.tree_leaves_with_path(pop.train_state)
    keys = [jax.tree_util.keystr(p) for p, leaf in leaves if vz.is_key_leaf(p, leaf)]
    assert keys == ["['key']"]


def test_two_copies_of_one_parent_draw_different_actions_and_environment_noise(train):
    fns = _population(train)
    pop, _ = fns.train_round(fns.init(root_key(0)))
    before = pop.hparams
    # truncation with half the population copying: members 2 and 3 (tied last) may
    # copy only member 0 (member 1 ties with them), so both copy member 0
    pop, exploit = fns.exploit(pop, np.array([3.0, 0.0, 0.0, 0.0], np.float32))
    assert np.asarray(exploit.parents).tolist() == [0, 1, 0, 0]
    # give the copies their parent's hyperparameters back (explore changed them): what
    # differs between the three from now on can only come from their keys
    same = {k: jnp.take(v, exploit.parents) for k, v in before.items()}
    pop = pop.replace(hparams=same, train_state=vz.write_hparams(pop.train_state, same))
    state = pop.train_state
    for i in (2, 3):
        jax.tree.map(lambda x, i=i: np.testing.assert_array_equal(x[0], x[i]), state["params"])
        np.testing.assert_array_equal(state["obs"][0], state["obs"][i])
    keys = np.asarray(state["key"])
    assert len({tuple(keys[i]) for i in (0, 2, 3)}) == 3, "a copy kept its parent's key"

    after, _ = fns.train_round(pop)
    obs = np.asarray(after.train_state["obs"])
    weights = np.asarray(after.train_state["params"]["params"]["Dense_2"]["kernel"])
    for a, b in ((0, 2), (0, 3), (2, 3)):
        assert not np.array_equal(obs[a], obs[b]), (a, b)
        assert not np.array_equal(weights[a], weights[b]), (a, b)


@pytest.mark.parametrize(
    "bad",
    [
        ["--total-steps", "0"],
        ["--interval", "0"],
        ["--interval", "-100000"],
        ["--interval", "100"],
        # one round or less (no exploit ever), or not whole rounds (rounded up: 976x the
        # total asked for with this interval)
        ["--total-steps", "10240"],
        ["--total-steps", "2048"],
        ["--total-steps", "9600", "--interval", "3200"],
        ["--total-steps", "1024", "--interval", "1000000"],
        ["--seed", str(2**63 - 1)],
        # (a run that can never exploit, reported as PBT, helper-319)
        ["--members", "1"],
        ["--quantile", "0"],
    ],
)
def test_steps_out_of_range_are_refused(train, bad, capsys):
    # 0 was taken as "unset" (the environment's default ran), a negative or short
    # interval became one update, silently
    with pytest.raises(SystemExit):
        train.parse(bad)
    assert "must be" in capsys.readouterr().err


def test_the_device_checks_rl_arguments_are_taken(train, tmp_path):
    """benchmarks/device_check.sh's QUICK dry run passed a total of less than a round,
    which examples.rl refused once it asked for whole rounds (helper-282)."""
    import re
    import shlex

    script = (Path(__file__).parent.parent / "benchmarks" / "device_check.sh").read_text()
    settings = re.findall(r"^\s*rl_args=\(([^)]*)\)", script, re.MULTILINE)
    assert len(settings) == 2  # QUICK's and the GPU run's
    for setting in settings:
        for fixed in ([], ["--fixed"]):
            train.parse([*shlex.split(setting), *fixed, "--logdir", str(tmp_path / "rl")])


def test_fixed_runs_may_be_one_round_and_run_checks_its_steps(train, tmp_path):
    """--fixed never exploits: one round is a run (it was refused with PBT's reason);
    run() itself checks the total (it ran a whole round for a total below one); a
    replaced run's summary.json does not outlive it (helper-120)."""
    args = train.parse(["--fixed", "--total-steps", "10240"])
    assert args.total_steps == 10240
    args.total_steps, args.logdir = 100, str(tmp_path)
    with pytest.raises(ValueError, match="whole number of rounds"):
        train.run(args)
    (tmp_path / "summary.json").write_text("{}")
    train._open_log(str(tmp_path), overwrite=False, members=8).close()
    assert not (tmp_path / "summary.json").exists()


def test_overwrite_never_deletes_a_run_another_process_is_writing(train, run, tmp_path):
    # --overwrite removed the folder while the first run trained on: that run died
    # (LogDirDeletedError) and its history was gone
    import shutil
    import subprocess

    _, logdir = run
    shutil.copytree(logdir / "population", tmp_path / "population")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path / "population")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(SystemExit, match="in use by another live jaxpop controller"):
            train._open_log(str(tmp_path), True, MEMBERS)
        assert storage.read_state(tmp_path / "population") is not None  # (untouched)
    finally:
        holder.kill()
        holder.wait()
    train._open_log(str(tmp_path), True, MEMBERS).close()  # free now: replaced
    assert storage.read_state(tmp_path / "population") is None


def test_a_refused_open_leaves_the_run_and_its_live_store_as_they_were(train, run, tmp_path):
    # (the first fix read the run through a Store of its own: a refused second main() in
    # this process took the first one's run over, and repaired a torn journal it refused)
    import shutil

    _, logdir = run
    shutil.copytree(logdir / "population", tmp_path / "population")
    live = storage.Store(tmp_path / "population")
    live.start(live.load())
    files = {p.name: p.read_bytes() for p in (tmp_path / "population").iterdir()}
    with pytest.raises(SystemExit, match="already holds a run"):
        train._open_log(str(tmp_path), False, MEMBERS)
    live.write_file("probe", b"x")  # (not superseded)
    assert not live.superseded
    live.close()
    for name, data in files.items():
        assert (tmp_path / "population" / name).read_bytes() == data, name


HOLD = """
import sys, time
from jaxpop import storage
store = storage.Store(sys.argv[1])
print("held", flush=True)
time.sleep(600)
"""
