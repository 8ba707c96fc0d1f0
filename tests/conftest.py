"""Shared fixtures: one local Ray instance for every test that needs Ray (tests marked slow)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))  # tests/fakes.py


@pytest.fixture(scope="session")
def ray_session():
    """A local 2-CPU Ray, started once for the whole run.

    Its workers run ``fakes.accept_fake_cifar_in_worker`` at start-up (Ray's
    ``worker_process_setup_hook``), so trials can read the fake CIFAR files that the tests
    write in the real format (torchvision would reject their md5 sums).
    """
    import ray

    pythonpath = os.pathsep.join([str(TESTS), str(TESTS.parent), os.environ.get("PYTHONPATH", "")])
    # address="local": a new instance, even where a stale /tmp/ray/ray_current_cluster names another
    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": pythonpath},
                          "worker_process_setup_hook": "fakes.accept_fake_cifar_in_worker"})
    yield ray
    ray.shutdown()
