"""Ray Tune trainables wrapping the training loop of :mod:`snn.training`."""

from trainables._trainable import load_state, train_snn
from trainables.layout import FIRST_GRAD_FILE, NODE_ID, RECORD_FILE, STATE_FILE, STRIPPED_MODEL_FILE, read_record

__all__ = ["FIRST_GRAD_FILE", "NODE_ID", "RECORD_FILE", "STATE_FILE", "STRIPPED_MODEL_FILE", "load_state",
           "read_record", "train_snn"]
