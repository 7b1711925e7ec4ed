"""PPO agents on a gymnax environment trained as one vectorized population with PBT."""

from examples.rl.train import main

main()
