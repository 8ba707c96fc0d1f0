"""Run a study on a Ray cluster made with ``ray up``: the script for ``ray submit``.

    ray submit docker/cluster.yaml docker/submit_study.py SPEC [snn-study run options]

It runs on the head node (in its home directory; the repository is at ~/snn-study) and
is ``snn-study run --address auto SPEC ...``: the study joins the running cluster.
Arguments starting with ``~`` are expanded. The exit status is snn-study's.
"""

import os
import sys

from study.cli import cli

if __name__ == "__main__":
    args = [os.path.expanduser(a) for a in sys.argv[1:]]
    # standalone_mode: click exits with the command's status (2 bad spec, 1 failure, 0 ok).
    cli.main(args=["run", "--address", "auto", *args], prog_name="snn-study", standalone_mode=True)
