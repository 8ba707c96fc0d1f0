"""``snn-study export``: a real study's best model to NIR from each kind of source, run by an
independent simulator (snnTorch's NIR importer) against the project's own stripped network, and
the command's one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from study.spec import quickstart_spec
from study.tuner import run_study

ROOT = Path(__file__).resolve().parents[2]
TIMESTEPS = 4

pytestmark = pytest.mark.slow  # a study on Ray and MLflow, snn-study as a process


def snn_study(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "study.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def error_line(r: subprocess.CompletedProcess) -> str:
    lines = [line for line in r.stderr.strip().splitlines() if line.startswith("snn-study: error:")]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    return lines[0]


@pytest.fixture(scope="module")
def study(ray_session, tmp_path_factory):
    """A one-trial study of a tiny ResNet with shortcut heads after stages 1 and 2 (the paper's
    setting, the first trial of every search) on digits, T = 4, 3 epochs."""
    tmp = tmp_path_factory.mktemp("export")
    uri = f"sqlite:///{tmp}/mlflow.db"
    spec = quickstart_spec({"name": "nir", "trials": 1, "timesteps": TIMESTEPS, "train.epochs": 3,
                            "scheduler": "fifo", "storage": str(tmp / "studies"), "mlflow.tracking_uri": uri,
                            "data_root": str(tmp / "data")})
    result = run_study(spec, verbose=0)
    from mlflow import MlflowClient

    best_run = MlflowClient(uri).get_run(result.parent_run_id).data.tags["best_run_id"]
    return spec, result, uri, tmp, best_run


def test_a_study_a_run_id_and_a_registered_alias_export_the_same_graph_logged_to_the_best_run(study):
    import nir
    from mlflow import MlflowClient

    spec, result, uri, tmp, best_run = study
    assert result.best["config"]["branches"] == "1,2"  # trained with shortcut heads
    sources = {"study": str(result.path), "run": best_run, "alias": "models:/nir@best"}
    graphs = {}
    for kind, source in sources.items():
        r = snn_study("export", source, "--format", "nir", "-o", f"{kind}.nir", "--tracking-uri", uri, cwd=tmp)
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("exported ") and f"logged as model.nir of run {best_run}" in r.stdout
        graphs[kind] = nir.read(tmp / f"{kind}.nir")
    for kind, g in graphs.items():
        kinds = {type(n).__name__ for n in g.nodes.values()}
        assert "LIF" in kinds and not any("norm" in k.lower() for k in kinds), kind
        assert g.metadata["mlflow_run_id"] == best_run and int(g.metadata["timesteps"]) == TIMESTEPS
        assert set(g.nodes) == set(graphs["run"].nodes) and sorted(g.edges) == sorted(graphs["run"].edges)
        for name, node in g.nodes.items():
            for key, value in vars(node).items():
                if isinstance(value, np.ndarray):
                    assert np.array_equal(value, getattr(graphs["run"].nodes[name], key)), (kind, name, key)
    assert "model.nir" in {a.path for a in MlflowClient(uri).list_artifacts(best_run)}


def test_snntorch_runs_the_export_as_the_project_runs_the_trials_network(study):
    """The exported file, imported by snnTorch and run for T steps on digits' test set, against the
    trial's stripped network as the project builds it from the trial's own folder: the same
    prediction on at least 99 % of the test set, and every layer's spike count within 0.1 %
    (docs/nir.md gives the figures measured: identical on every sample)."""
    pytest.importorskip("snntorch")
    import torch
    from nir_sim import import_snntorch, run_project, run_snntorch

    from snn import data as snn_data
    from study.tracking import inference_model, read_trial

    spec, result, uri, tmp, best_run = study
    out = tmp / "agreement.nir"
    assert snn_study("export", str(result.path), "-o", str(out), cwd=tmp).returncode == 0
    record = read_trial(result.path / f"trial_{result.best['trial_id']}")
    net, _ = inference_model(record.checkpoint)
    test = snn_data.build("digits", str(tmp / "data"), train=False)
    x = torch.stack([test[i][0] for i in range(len(test))])
    labels = torch.tensor([int(test[i][1]) for i in range(len(test))])
    theirs = run_snntorch(import_snntorch(out), x, TIMESTEPS)
    ours = run_project(net, x)
    agree = (theirs.logits.argmax(1) == ours.logits.argmax(1)).float().mean().item()
    assert agree >= 0.99
    assert (ours.logits.argmax(1) == labels).float().mean() > 0.8  # a trained network, not a constant one
    assert set(theirs.spikes) == set(ours.spikes)
    for name, count in ours.spikes.items():
        assert count.sum() > 0 and abs(theirs.spikes[name].sum() - count.sum()) <= 1e-3 * count.sum(), name


def test_a_missing_path_and_an_unfinished_study_are_one_line(study):
    from study.tracking import start_parent_run

    spec, result, uri, tmp, best_run = study
    r = snn_study("export", str(tmp / "nowhere"), cwd=tmp)
    assert r.returncode == 1
    assert "nowhere: no study folder, MLflow run id or models:/ URI" in error_line(r)
    # a study that has not finished: no registered model, no best run on its parent run
    folder = tmp / "unfinished"
    folder.mkdir()
    saved = yaml.safe_load((result.path / "study.yaml").read_text())
    (folder / "study.yaml").write_text(yaml.safe_dump({**saved, "name": "unfinished"}))
    parent = start_parent_run(uri, spec.experiment, "unfinished", {})
    (folder / "study.json").write_text(json.dumps({"parent_run_id": parent, "tracking_uri": uri}))
    r = snn_study("export", str(folder), cwd=tmp)
    assert r.returncode == 1
    assert "unfinished: the study has no finished model yet" in error_line(r)
    r = snn_study("export", "0" * 32, "--tracking-uri", uri, cwd=tmp)
    assert r.returncode == 1 and f"{'0' * 32}: no such run" in error_line(r)
    assert not list(tmp.glob("model.nir"))


def test_a_layer_nir_cannot_express_is_one_line_naming_it(study, tmp_path):
    """A trial's network with the ImageNet stem (its max-pooling has no NIR node): exit code 2."""
    import torch
    from mlflow import MlflowClient

    from snn import models
    from study.tracking import log_inference_model
    from trainables.layout import STRIPPED_MODEL_FILE, STRIPPED_SPEC_FILE

    spec, result, uri, tmp, best_run = study
    build = {"arch": "resnet-tiny", "num_classes": 10, "timesteps": 2, "in_channels": 1, "branches": "none",
             "stem": "imagenet"}
    ckpt = tmp_path / "checkpoint_000001"
    ckpt.mkdir()
    torch.save(models.strip_shortcuts(models.build(**build)).state_dict(), ckpt / STRIPPED_MODEL_FILE)
    (ckpt / STRIPPED_SPEC_FILE).write_text(json.dumps({"build": build, "kind": "static", "input_shape": [1, 8, 8]}))
    c = MlflowClient(uri)
    run = c.create_run(c.get_experiment_by_name(spec.experiment).experiment_id, tags={"kind": "trial"}).info.run_id
    log_inference_model(uri, run, ckpt)
    r = snn_study("export", run, "--tracking-uri", uri, "-o", str(tmp_path / "m.nir"), cwd=tmp_path)
    assert r.returncode == 2
    line = error_line(r)
    assert f"{run}: cannot export to NIR: maxpool (the imagenet stem's 3x3 max-pooling)" in line
    assert "arch_kwargs stem: cifar" in line
    assert not (tmp_path / "m.nir").exists()


def test_export_model_in_python_leaves_sys_path_as_it_was(study, tmp_path):
    """Loading the logged model puts its code folder first on sys.path: the export takes it off."""
    from study.export import NIR_ARTIFACT, export_model

    spec, result, uri, tmp, best_run = study
    before = list(sys.path)
    done = export_model(best_run, tmp_path / "sub" / "m.nir", tracking_uri=uri)
    assert sys.path == before
    assert done.path == tmp_path / "sub" / "m.nir" and done.path.is_file() and done.run_id == best_run
    assert done.neurons == 7 and NIR_ARTIFACT in done.summary()  # resnet-tiny: stem + 2 per block x 3
