"""The ``simple_cnn`` population on Ray: the controller and every worker are Ray actors."""
