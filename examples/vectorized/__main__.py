from examples.vectorized.train import main

main()
