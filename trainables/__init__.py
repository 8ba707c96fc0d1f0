"""Ray Tune trainables wrapping the training loop of :mod:`snn.training`."""

from trainables._trainable import FIRST_GRAD_FILE, FIRST_GRAD_PLOT, NODE_ID, STATE_FILE, STRIPPED_MODEL_FILE, load_state, train_snn

__all__ = ["FIRST_GRAD_FILE", "FIRST_GRAD_PLOT", "NODE_ID", "STATE_FILE", "STRIPPED_MODEL_FILE", "load_state", "train_snn"]
