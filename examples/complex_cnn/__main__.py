from examples.complex_cnn.train import main

main()
