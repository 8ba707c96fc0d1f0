"""The private and undocumented library APIs the product relies on, one test each.

Each test is named after the library symbol, uses it on a small real object the way the
product does, and fails with a message naming the symbol, so that an upgrade which changes
it fails here, by name, instead of silently inside a study. docs/decisions.md ("Private APIs
we rely on") says where each one is used and why no public way exists.

The tests exercise the libraries themselves, not the project's wrappers, so they hold
wherever those wrappers live. None starts Ray: OptunaSearch, Repeater, Tune's schedulers, a
class Trainable and Ray Train's StorageContext all work without ``ray.init``.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import math
import pickle

import pytest
import torch

DOC = "docs/decisions.md, 'Private APIs we rely on'"


def _check(ok: object, symbol: str, expected: str) -> None:
    assert ok, f"{symbol}: no longer {expected}; the library changed under the product (see {DOC})"


def _attr(obj: object, name: str, symbol: str) -> object:
    try:
        return getattr(obj, name)
    except AttributeError:
        pytest.fail(f"{symbol}: gone from {type(obj).__name__}; the library changed under the product (see {DOC})")


def _module(name: str, symbol: str):
    try:
        return importlib.import_module(name)
    except ImportError as e:
        pytest.fail(f"{symbol}: module {name} cannot be imported ({e}); the library changed under the product "
                    f"(see {DOC})")


# -- Optuna: a user attribute on a trial another process asked for --------------------------------
def _two_handles(tmp_path):
    """An Optuna study in SQLite (as the study's storage is) seen through two handles: the one
    that asks (the searcher's) and one loaded from the same URL (the driver's tracker's, or the
    searcher after a restart). The asking side holds trial 0 RUNNING and has finished trial 1."""
    import optuna

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    asking = optuna.create_study(study_name="s", storage=url, direction="maximize")
    running = asking.ask()
    finished = asking.ask()
    asking.tell(finished, 0.5)
    return url, running.number, finished.number, optuna.load_study(study_name="s", storage=url)


def test_optuna_study_private_storage(tmp_path):
    import optuna

    symbol = "optuna.Study._storage"
    url, *_, loaded = _two_handles(tmp_path)
    storage = _attr(loaded, "_storage", symbol)
    _check(isinstance(storage, optuna.storages.BaseStorage), symbol, "an optuna.storages.BaseStorage")
    params = list(inspect.signature(storage.set_trial_user_attr).parameters)
    _check(params == ["trial_id", "key", "value"], f"{symbol}.set_trial_user_attr",
           f"taking (trial_id, key, value) (now {params})")


def test_optuna_frozen_trial_private_trial_id(tmp_path):
    import optuna
    from optuna.trial import TrialState

    symbol = "optuna.trial.FrozenTrial._trial_id"
    url, running_number, finished_number, loaded = _two_handles(tmp_path)
    storage = loaded._storage
    trial = next(t for t in loaded.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
    trial_id = _attr(trial, "_trial_id", symbol)
    study_id = storage.get_study_id_from_name("s")
    _check(isinstance(trial_id, int) and trial_id == storage.get_trial_id_from_study_id_trial_number(
        study_id, running_number), symbol, "the storage's id of the trial")

    # what the product does: name the trial's runs on it, from a handle that did not ask for it
    storage.set_trial_user_attr(trial_id, "mlflow_run_ids", ["r1"])
    seen = optuna.load_study(study_name="s", storage=url).trials[running_number].user_attrs
    _check(seen == {"mlflow_run_ids": ["r1"]}, symbol,
           f"a key under which Study._storage.set_trial_user_attr sets a RUNNING trial's attribute (read {seen})")

    # a finished trial is refused: the product checks is_finished() first, and links the run only
    done = loaded.get_trials(deepcopy=False)[finished_number]
    try:
        storage.set_trial_user_attr(done._trial_id, "mlflow_run_ids", ["r2"])
    except optuna.exceptions.UpdateFinishedTrialError:
        pass
    else:
        pytest.fail(f"{symbol}: Optuna now sets an attribute on a finished trial, which the product skips as "
                    f"impossible; the links could be kept for short trials too (see {DOC})")


# -- Ray Tune's OptunaSearch: its Optuna study and its trials by Tune trial id -------------------
def _space(trial) -> dict:
    """A define-by-run space like the product's: a log-scale float, a choice, a conditional."""
    trial.suggest_float("lr", 1e-4, 1e-1, log=True)
    if trial.suggest_categorical("surrogate", ["atan", "sigmoid"]) == "atan":
        trial.suggest_float("surrogate_param", 1.0, 4.0)
    return {"epochs": 3}


def _optuna_search(storage=None):
    from ray.tune.search.optuna import OptunaSearch

    return OptunaSearch(space=_space, metric="test_acc", mode="max", seed=0, storage=storage, study_name="s")


def test_optuna_search_private_ot_trials():
    import optuna

    symbol = "ray.tune.search.optuna.OptunaSearch._ot_trials"
    search = _optuna_search()
    config = search.suggest("t1")
    _check(isinstance(config, dict) and config.get("epochs") == 3 and "lr" in config, "OptunaSearch.suggest",
           f"returning the define-by-run space's values (got {config})")
    trials = _attr(search, "_ot_trials", symbol)
    _check(isinstance(trials, dict) and list(trials) == ["t1"], symbol,
           f"a dict keyed by Tune trial id (got {type(trials).__name__} {list(trials)})")
    ot_trial = trials["t1"]
    _check(isinstance(ot_trial, optuna.trial.Trial), symbol, "holding optuna.trial.Trial objects")
    ot_trial.set_user_attr("tune_trial_ids", ["t1"])  # what the product records on it
    ot_trial.set_constraint("firing", 0.0)
    search.on_trial_result("t1", {"test_acc": 0.4, "training_iteration": 1})
    search.on_trial_complete("t1", {"test_acc": 0.5, "training_iteration": 2})
    _check(search._ot_trials.get("t1") is ot_trial, symbol, "keeping a trial's entry once it completed")
    frozen = search._ot_study.get_trials(deepcopy=False)[ot_trial.number]
    _check(frozen.user_attrs == {"tune_trial_ids": ["t1"]} and frozen.intermediate_values == {1: 0.4}
           and frozen.value == 0.5, symbol, "the Optuna trial that OptunaSearch reports and tells")


def test_optuna_search_private_ot_study(tmp_path):
    import optuna
    from optuna.trial import TrialState

    symbol = "ray.tune.search.optuna.OptunaSearch._ot_study"
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    search = _optuna_search(storage)
    study = _attr(search, "_ot_study", symbol)
    _check(isinstance(study, optuna.Study), symbol, "an optuna.Study (set up in __init__ when a space is given)")
    search.suggest("t1")
    search.suggest("t2")
    numbers = [t.number for t in study.get_trials(deepcopy=False)]
    second = search._ot_trials.get("t2")
    _check(numbers == [0, 1] and second is not None and second.number == 1, symbol,
           f"numbering its trials 0, 1, ... in suggestion order, so get_trials()[number] is the trial "
           f"(got {numbers})")
    search.on_trial_complete("t1", {"test_acc": 0.5})
    states = [t.state for t in study.get_trials(deepcopy=False)]
    _check(states == [TrialState.COMPLETE, TrialState.RUNNING], symbol, f"showing told trials finished ({states})")

    # a driver restarted from a snapshot taken before t3 was suggested: t3's Optuna trial stays
    # RUNNING in the storage, unknown to the restored _ot_trials (the product fails it)
    saved = tmp_path / "searcher.pkl"
    search.save(str(saved))
    search.suggest("t3")
    restored = _optuna_search(storage)
    restored.restore(str(saved))
    study = _attr(restored, "_ot_study", symbol)
    known = {t.number for t in restored._ot_trials.values()}
    running = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
    _check(known == {0, 1} and running == [1, 2], symbol,
           f"restored by OptunaSearch.restore with its trials, reading the shared storage "
           f"(known {sorted(known)}, running {running})")


def test_optuna_search_and_repeater_leave_our_attribute_names_free():
    """The names the product's subclasses add (StudyOptunaSearch, SeededRepeater, the PBT
    schedulers' last-epoch guard) must not shadow one of Ray's."""
    from ray.tune.schedulers import PopulationBasedTraining
    from ray.tune.schedulers.pb2 import PB2
    from ray.tune.search import Repeater

    search = _optuna_search()
    ours = {
        "ray.tune.search.optuna.OptunaSearch": (search, {"epochs", "_reported", "link", "_finished"}),
        "ray.tune.search.Repeater": (Repeater(search, repeat=2, set_index=False), {"seed", "_stopped"}),
        "ray.tune.schedulers.PopulationBasedTraining": (
            PopulationBasedTraining(time_attr="training_iteration", metric="test_acc", mode="max",
                                    hyperparam_mutations={"lr": [0.01, 0.1]}), {"_epochs"}),
        "ray.tune.schedulers.pb2.PB2": (
            PB2(time_attr="training_iteration", metric="test_acc", mode="max",
                hyperparam_bounds={"lr": [0.01, 0.1]}), {"_epochs"}),
    }
    for symbol, (obj, names) in ours.items():
        taken = sorted(n for n in names if n in vars(obj) or any(n in vars(k) for k in type(obj).__mro__))
        _check(not taken, symbol, f"free of the names our subclass adds ({', '.join(taken)} now Ray's)")


# -- Ray Tune's Repeater: the replicate groups -----------------------------------------------------
def test_repeater_private_trial_id_to_group():
    from ray.tune.search import Repeater

    symbol = "ray.tune.search.Repeater._trial_id_to_group"
    repeater = Repeater(_optuna_search(), repeat=2, set_index=False)
    configs = [repeater.suggest(t) for t in ("t1", "t2", "t3")]
    groups = _attr(repeater, "_trial_id_to_group", symbol)
    _check(isinstance(groups, dict) and set(groups) == {"t1", "t2", "t3"}, symbol,
           "a dict of every suggested trial id")
    _check(groups["t1"] is groups["t2"] and groups["t3"] is not groups["t1"] and configs[0] == configs[1], symbol,
           "mapping the replicates of one configuration to one group")
    # the product saves get_state() pickled beside the searcher and restores it with set_state
    again = Repeater(_optuna_search(), repeat=2, set_index=False)
    again.set_state(pickle.loads(pickle.dumps(repeater.get_state())))
    groups = _attr(again, "_trial_id_to_group", symbol)
    _check(set(groups) == {"t1", "t2", "t3"} and groups["t1"] is groups["t2"], symbol,
           "part of Repeater.get_state / set_state")


def test_repeater_private_trial_group():
    from ray.tune.search import Repeater

    symbol = "ray.tune.search.repeater._TrialGroup"
    repeater = Repeater(_optuna_search(), repeat=2, set_index=False)
    repeater.suggest("t1")
    group = repeater._trial_id_to_group["t1"]
    count = _attr(group, "count", f"{symbol}.count")
    _check(count() == 1, f"{symbol}.count", "1 right after the group's first suggestion (the replicate's seed offset + 1)")
    repeater.suggest("t2")
    _check(count() == 2, f"{symbol}.count", "2 right after its second suggestion")
    _check(_attr(group, "primary_trial_id", f"{symbol}.primary_trial_id") == "t1", f"{symbol}.primary_trial_id",
           "the first trial's id (the one the searcher knows)")
    _check(_attr(group, "max_trials", f"{symbol}.max_trials") == 2, f"{symbol}.max_trials", "the repeat count")
    trials = _attr(group, "_trials", f"{symbol}._trials")
    _check(list(trials) == ["t1", "t2"], f"{symbol}._trials", f"the group's trial ids in order (got {list(trials)})")
    group.report("t2", math.nan)  # a replicate the firing-rate guard stopped
    _check(math.isnan(trials["t2"]), f"{symbol}.report", "storing a NaN score under the trial's id")


# -- MLflow's system-metrics monitors --------------------------------------------------------------
_MONITORS = {
    "CPUMonitor": "mlflow.system_metrics.metrics.cpu_monitor",
    "DiskMonitor": "mlflow.system_metrics.metrics.disk_monitor",
    "NetworkMonitor": "mlflow.system_metrics.metrics.network_monitor",
    "GPUMonitor": "mlflow.system_metrics.metrics.gpu_monitor",
    "ROCMMonitor": "mlflow.system_metrics.metrics.rocm_monitor",
}


def _monitor_class(name: str):
    symbol = f"{_MONITORS[name]}.{name}"
    return symbol, _attr(_module(_MONITORS[name], symbol), name, symbol)


@pytest.mark.parametrize("name", ["CPUMonitor", "DiskMonitor", "NetworkMonitor"])
def test_mlflow_system_metrics_monitor_collect_aggregate_clear(name):
    """What the trial's sampler does each epoch: collect (in a thread, and once more at the
    epoch's end), aggregate into one number per metric, clear."""
    symbol, cls = _monitor_class(name)
    monitor = cls()
    for step in ("collect_metrics", "aggregate_metrics", "clear_metrics", "metrics"):
        _attr(monitor, step, f"{symbol}.{step}")
    monitor.collect_metrics()
    monitor.collect_metrics()
    collected = dict(monitor.metrics)
    averages = monitor.aggregate_metrics()
    _check(isinstance(averages, dict) and averages and set(averages) == set(collected), f"{symbol}.aggregate_metrics",
           f"one value per collected metric (collected {sorted(collected)}, aggregated {sorted(averages)})")
    _check(all(isinstance(k, str) and isinstance(float(v), float) for k, v in averages.items()),
           f"{symbol}.aggregate_metrics", "a dict of metric name -> number")
    monitor.clear_metrics()
    _check(not monitor.metrics, f"{symbol}.clear_metrics", "emptying the samples")
    monitor.collect_metrics()
    _check(set(monitor.aggregate_metrics()) == set(averages), f"{symbol}.collect_metrics",
           "collecting again after clear_metrics")


@pytest.mark.parametrize("name", ["GPUMonitor", "ROCMMonitor"])
def test_mlflow_system_metrics_gpu_monitor(name):
    """A GPU monitor raises where there is no such GPU or driver library (the product then
    goes on without it), and otherwise collects like the others."""
    from mlflow.system_metrics.metrics.base_metrics_monitor import BaseMetricsMonitor

    symbol, cls = _monitor_class(name)
    _check(issubclass(cls, BaseMetricsMonitor), symbol, "a BaseMetricsMonitor")
    try:
        monitor = cls()
    except Exception:  # no GPU of this kind here: what the product expects on such a node
        return
    monitor.collect_metrics()
    _check(isinstance(monitor.aggregate_metrics(), dict), f"{symbol}.aggregate_metrics", "a dict")
    monitor.clear_metrics()


def test_mlflow_system_metrics_monitor_set_and_prefix():
    """The trial runs the monitors MLflow's own SystemMetricsMonitor runs, under its prefix."""
    from mlflow.system_metrics.metrics.base_metrics_monitor import BaseMetricsMonitor

    symbol = "mlflow.system_metrics.system_metrics_monitor.SystemMetricsMonitor"
    module = _module("mlflow.system_metrics.system_metrics_monitor", symbol)
    used = {v.__name__ for v in vars(module).values()
            if isinstance(v, type) and issubclass(v, BaseMetricsMonitor) and v is not BaseMetricsMonitor}
    _check(used == set(_MONITORS), symbol, f"running exactly {sorted(_MONITORS)} (it imports {sorted(used)})")
    source = inspect.getsource(_attr(module, "SystemMetricsMonitor", symbol))
    _check('"system/"' in source, symbol, 'logging its metrics under the prefix "system/"')


# -- torch -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device"))])
def test_torch_foreach_norm(device):
    symbol = "torch._foreach_norm"
    foreach_norm = _attr(torch, "_foreach_norm", symbol)
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(16, 3, 3, 3, generator=g), torch.randn(10, 64, generator=g), torch.zeros(5),
             torch.randn(8, 4, 3, 3, generator=g).to(memory_format=torch.channels_last),  # a channels-last weight
             torch.randn(7, 9, generator=g).t()]  # not contiguous
    grads = [t.to(device) for t in grads]
    norms = foreach_norm(grads)
    _check(len(norms) == len(grads) and all(n.dim() == 0 and n.device == grads[0].device for n in norms), symbol,
           "one 0-d tensor per input, on the inputs' device")
    stacked = torch.stack(norms)
    expected = torch.stack([torch.linalg.vector_norm(t) for t in grads])
    _check(torch.allclose(stacked, expected, rtol=1e-5, atol=1e-6), symbol,
           f"each tensor's L2 norm, as torch.linalg.vector_norm gives it ({stacked.tolist()} against "
           f"{expected.tolist()})")


def test_torch_ops_mkldnn_is_mkldnn_bf16_supported():
    symbol = "torch.ops.mkldnn._is_mkldnn_bf16_supported"
    if not torch.backends.mkldnn.is_available():
        pytest.skip("this torch build has no oneDNN: the product trains in float32 on the CPU")
    try:
        supported = torch.ops.mkldnn._is_mkldnn_bf16_supported
    except (AttributeError, RuntimeError) as e:
        pytest.fail(f"{symbol}: gone ({e}); the product would silently stop using bfloat16 on CPUs (see {DOC})")
    value = supported()
    _check(isinstance(value, bool), symbol, f"returning a bool (got {value!r})")
    capabilities = getattr(torch.cpu, "get_capabilities", dict)()
    if capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"):
        _check(value, symbol, "True on a CPU with native bfloat16 instructions (AVX512-BF16 or AMX-BF16)")


def test_torch_lr_scheduler_state_private_last_lr():
    """A PBT-perturbed lr written into a checkpoint's optimizer and schedule state, as the
    trainable does, resumes the cosine schedule from the new rate."""
    symbol = "torch.optim.lr_scheduler.CosineAnnealingLR.state_dict()['_last_lr']"

    def schedule(lr: float):
        weight = torch.nn.Parameter(torch.ones(3))
        optimizer = torch.optim.SGD([weight], lr=lr)  # the schedule is the same over any optimizer
        return optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=10, eta_min=0.0)

    optimizer, scheduler = schedule(0.1)
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    state, opt_state = scheduler.state_dict(), optimizer.state_dict()
    _check("_last_lr" in state and "base_lrs" in state, symbol,
           f"a key of the scheduler's state_dict, beside base_lrs (keys {sorted(state)})")
    ratio = 2.0
    for group in opt_state["param_groups"]:
        group["lr"] *= ratio
        group["initial_lr"] *= ratio
    for key in ("base_lrs", "_last_lr"):
        state[key] = [v * ratio for v in state[key]]
    resumed, resumed_scheduler = schedule(0.2)
    resumed.load_state_dict(opt_state)
    resumed_scheduler.load_state_dict(state)
    _check(resumed_scheduler.get_last_lr() == pytest.approx([ratio * v for v in scheduler.get_last_lr()]), symbol,
           "what get_last_lr() returns after load_state_dict")
    optimizer.step()
    scheduler.step()
    resumed.step()
    resumed_scheduler.step()
    lr = resumed.param_groups[0]["lr"]
    _check(lr == pytest.approx(ratio * optimizer.param_groups[0]["lr"])
           and lr == pytest.approx(0.2 * (1 + math.cos(math.pi * 4 / 10)) / 2), symbol,
           f"enough, with base_lrs and the optimizer's lr, to go on along the cosine from the new rate (lr {lr})")


# -- Ray Tune and Ray Train ------------------------------------------------------------------------
def test_ray_tune_result_auto_result_keys(tmp_path, monkeypatch):
    """Every key a Tune trainable adds to a result, but for ``done`` (a bool, not logged) and
    ``trial_id`` (which the product leaves out itself), is in AUTO_RESULT_KEYS."""
    from ray import tune
    from ray.tune.trainable import trainable as trainable_module

    symbol = "ray.tune.result.AUTO_RESULT_KEYS"
    keys = _attr(_module("ray.tune.result", symbol), "AUTO_RESULT_KEYS", symbol)
    _check(isinstance(keys, (tuple, list, set, frozenset)) and all(isinstance(k, str) for k in keys), symbol,
           "a collection of result keys")
    _check("time_total_s" in keys, symbol, "listing time_total_s (the product keeps it as a metric)")

    class _Trainable(tune.Trainable):
        def step(self):
            return {"test_acc": 0.5}

    # without a StorageContext, a Trainable makes a folder in Tune's default storage path
    monkeypatch.setattr(trainable_module, "DEFAULT_STORAGE_PATH", str(tmp_path), raising=False)
    trainable = _Trainable(config={"lr": 0.1})
    try:
        result = trainable.train()
    finally:
        trainable.stop()
    added = set(result) - {"test_acc", "done", "trial_id"}
    _check(added <= set(keys), symbol, f"covering every key Tune adds to a result (missing {sorted(added - set(keys))})")


def _storage_context(tmp_path):
    from ray.train._internal.storage import StorageContext

    return StorageContext(storage_path=str(tmp_path / "store"), experiment_dir_name="study",
                          trial_dir_name="trial_0")


def test_ray_train_storage_private_make_checkpoint_dir_name(tmp_path):
    from ray import tune

    symbol = "ray.train._internal.storage.StorageContext._make_checkpoint_dir_name"
    storage = _storage_context(tmp_path)
    make = _attr(type(storage), "_make_checkpoint_dir_name", symbol)
    _check(make(0) == "checkpoint_000000" and make(41) == "checkpoint_000041", symbol,
           f"'checkpoint_' and a six-digit index (got {make(41)!r})")
    source = tmp_path / "source"
    source.mkdir()
    (source / "state.pt").write_bytes(b"x")
    storage.current_checkpoint_index = 7
    persisted = storage.persist_current_checkpoint(tune.Checkpoint.from_directory(str(source)))
    name = persisted.path.rstrip("/").rsplit("/", 1)[-1]
    _check(name == "checkpoint_000007", symbol, f"the name of the folder a reported checkpoint is saved in ({name})")


def test_ray_train_storage_private_logger(tmp_path):
    """The trial sets this logger to WARNING: it logs one INFO line per reported checkpoint."""
    from ray import tune

    symbol = "logger 'ray.train._internal.storage'"
    storage = _storage_context(tmp_path)
    source = tmp_path / "source"
    source.mkdir()
    (source / "state.pt").write_bytes(b"x")
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("ray.train._internal.storage")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        storage.current_checkpoint_index = 0
        storage.persist_current_checkpoint(tune.Checkpoint.from_directory(str(source)))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    lines = [r for r in records if r.levelno == logging.INFO and "Checkpoint successfully created" in r.getMessage()]
    _check(lines, symbol, "where Ray logs 'Checkpoint successfully created' at INFO for each reported checkpoint")


def test_ray_train_storage_private_delete_fs_path(tmp_path):
    """Tune deletes a trial's older checkpoint with this function, which raises on a path that
    is gone; the trainable puts an empty folder there after a driver restart."""
    import pyarrow.fs

    symbol = "ray.train._internal.storage._delete_fs_path"
    storage_module = _module("ray.train._internal.storage", symbol)
    delete = _attr(storage_module, "_delete_fs_path", symbol)
    manager = _module("ray.train._internal.checkpoint_manager", symbol)
    _check(getattr(manager, "_delete_fs_path", None) is delete, symbol,
           "what Tune's checkpoint manager deletes old checkpoints with")
    fs = pyarrow.fs.LocalFileSystem()
    empty = tmp_path / "checkpoint_000000"
    empty.mkdir()
    delete(fs, str(empty))
    _check(not empty.exists(), symbol, "deleting an empty checkpoint folder")
    try:
        delete(fs, str(tmp_path / "checkpoint_000001"))
    except FileNotFoundError:
        pass
    else:
        pytest.fail(f"{symbol}: now accepts a path that is gone; the trainable's empty placeholder folder "
                    f"(_keep_prunable) is no longer needed (see {DOC})")


@pytest.mark.parametrize("name, words, why", [
    ("ray.tune.execution.experiment_state", "may become a bottleneck",
     "the warning that snapshots 'may become a bottleneck'"),
    ("ray.tune.logger.logger", "Remote file not found", "the warning when PBT or a retry restarts a trial"),
    ("ray.tune.tune", "Resume experiment with", "the advice to resume with Tuner.restore"),
])
def test_ray_tune_logger_messages_the_console_drops(name, words, why):
    """study/console.py's _TUNE_ADVICE drops these records by logger and words: each logger
    must still be its module's and still log those words."""
    symbol = f"logger {name!r}"
    module = _module(name, symbol)
    logger = _attr(module, "logger", symbol)
    _check(logger.name == name, symbol, f"the module's logger (now {logger.name})")
    _check(words in inspect.getsource(module), symbol, f"{why} ({words!r}, which the console's filter matches)")


def test_ray_tune_experimental_output_private_infer_user_metrics():
    """The progress table of a Tuner shows the first four metrics a trial reports, in its order:
    the trainable reports the study's objectives first so that the table shows them."""
    from ray.air._internal.usage import AirEntrypoint
    from ray.tune.experiment import Trial

    symbol = "ray.tune.experimental.output._infer_user_metrics"
    output = _module("ray.tune.experimental.output", symbol)
    _attr(output, "_infer_user_metrics", symbol)
    reporter = output._detect_reporter(output.AirVerbosity.DEFAULT, num_samples=1, entrypoint=AirEntrypoint.TUNER)
    trial = Trial("__fake", config={}, stub=True)
    trial.update_last_result({"test_acc": 0.9, "energy_uj": 0.2, "train_loss": 1.0, "train_acc": 0.5, "lambda": 0.1,
                              "node_id": "abc", "training_iteration": 2, "time_total_s": 3.0})
    _, table = reporter._get_heartbeat([trial])
    _check(table.header[-4:] == ["test_acc", "energy_uj", "train_loss", "train_acc"], symbol,
           f"showing the first four metrics of a trial's result, in its order (header {table.header})")


def test_mlflow_pytorch_logger_pickle_advice():
    symbol = "logger 'mlflow.pytorch'"
    module = _module("mlflow.pytorch", symbol)
    logger = _attr(module, "_logger", symbol)
    _check(logger.name == "mlflow.pytorch", symbol, f"mlflow.pytorch's logger (now {logger.name})")
    source = inspect.getsource(_attr(module, "save_model", "mlflow.pytorch.save_model"))
    _check("`serialization_format` to 'pt2'" in source, symbol,
           "where save_model advises `serialization_format` 'pt2' for a pickled model (the filter's text)")


# -- tonic: where CIFAR10-DVS lies on disk ---------------------------------------------------------
def test_tonic_cifar10dvs_private_check_exists(tmp_path, monkeypatch):
    """The product decides whether CIFAR10-DVS is present (and so may be read without a
    download) the way tonic's ``_check_exists`` does: the archive in ``save_to/CIFAR10DVS``
    and at least 1000 extracted ``.aedat4`` files."""
    symbol = "tonic.datasets.CIFAR10DVS._check_exists"
    tonic = _module("tonic", symbol)
    cls = tonic.datasets.CIFAR10DVS
    monkeypatch.setattr(cls, "download", lambda self: pytest.fail(
        f"{symbol}: tonic downloads although the archive and 1000 event files are in place (see {DOC})"))
    where = tmp_path / cls.__name__
    where.mkdir()
    (where / _attr(cls, "filename", "tonic.datasets.CIFAR10DVS.filename")).write_bytes(b"")
    names = list(_attr(cls, "classes", "tonic.datasets.CIFAR10DVS.classes"))
    for k in range(1000):
        folder = where / names[k % len(names)]
        folder.mkdir(exist_ok=True)
        (folder / f"{k}.aedat4").write_bytes(b"")
    source = cls(save_to=str(tmp_path))
    _check(_attr(source, "location_on_system", "tonic.Dataset.location_on_system") == str(where),
           "tonic.Dataset.location_on_system", "save_to/<class name>")
    _check(source._check_exists(), symbol, "true with the archive and 1000 .aedat4 files")
    _check(len(source.targets) == 1000 and sorted(set(source.targets)) == list(range(len(names))),
           "tonic.datasets.CIFAR10DVS.targets", "one label per event file, from its class folder")
    next(where.glob("*/*.aedat4")).unlink()
    _check(not source._check_exists(), symbol, "false with fewer than 1000 .aedat4 files")

