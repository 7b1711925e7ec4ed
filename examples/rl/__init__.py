"""PPO agents on gymnax environments, a whole population on device with PBT.

Run it with ``python -m examples.rl``; the agent is in :mod:`examples.rl.ppo`, the
population in :mod:`examples.rl.train`. Needs ``pip install -e ".[rl]"`` (gymnax).
"""
