from examples.simple_cnn.train import main

main()
