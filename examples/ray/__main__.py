from examples.ray.train import main

main()
