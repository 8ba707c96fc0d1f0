"""Pure-PyTorch core: LIF neurons, surrogate gradients, spiking ResNets with shortcut
back-propagation (Guo et al., NeurIPS 2024), λ schedules, losses, diagnostics, data and
the one training loop. Imports torch and numpy only: no Ray, Optuna or MLflow.
"""
