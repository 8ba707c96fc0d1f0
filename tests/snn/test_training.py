import io
import os
import platform
import subprocess
import sys

import pytest
import torch

from snn.training import TEST_ACC, TRAIN_LOSS, Trainer, TrainConfig, fit


def cfg(**kw):
    base = dict(dataset="digits", arch="resnet-tiny", arch_kwargs={"width": 8}, epochs=3, batch_size=64,
                max_batches=6, seed=1)
    base.update(kw)
    return TrainConfig(**base)


def roundtrip(state):
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)  # checkpoints must load safely


def test_resume_is_exact():
    straight = []
    fit(cfg(), lambda m, t: straight.append(m))
    first = Trainer(cfg())
    m1 = first.run_epoch()
    state = roundtrip(first.state_dict())
    resumed = []
    fit(cfg(), lambda m, t: resumed.append((m, {k: v.clone() for k, v in t.model.state_dict().items()})), state=state)
    assert [m["epoch"] for m, _ in resumed] == [2, 3]
    assert m1[TRAIN_LOSS] == straight[0][TRAIN_LOSS]
    for a, (b, _) in zip(straight[1:], resumed):
        assert a[TRAIN_LOSS] == b[TRAIN_LOSS] and a[TEST_ACC] == b[TEST_ACC] and a["lambda"] == b["lambda"]


def test_the_progress_hook_sees_every_batch_and_changes_nothing():
    # what snn-study train draws its bar from: each phase's start (0) and every batch, with the
    # phase's total; training with it is the same, bit for bit, as without it
    def run(progress):
        epochs, started = [], []
        fit(cfg(epochs=2), lambda m, t: epochs.append((m, {k: v.clone() for k, v in t.model.state_dict().items()})),
            progress=progress, start=lambda t: started.append((t, t.epoch)))
        assert len(started) == 1 and started[0][1] == 0  # once, before the first epoch
        return epochs, started[0][0]

    calls = []
    watched, trainer = run(lambda *a: calls.append(a))
    plain, _ = run(None)
    tests = len(trainer.test_loader)
    one_epoch = [("train", b, 6) for b in range(7)] + [("test", b, tests) for b in range(tests + 1)]
    assert tests > 1 and calls == one_epoch * 2
    assert len(watched) == len(plain) == 2
    for (a, wa), (b, wb) in zip(watched, plain):
        timing = ("epoch_time", "images_per_s")
        assert {k: v for k, v in a.items() if k not in timing} == {k: v for k, v in b.items() if k not in timing}
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_lambda_follows_the_schedule_per_iteration():
    seen = []
    fit(cfg(epochs=2, lambda0=0.5, schedule="linear"), lambda m, t: seen.append((m["lambda"], t.step, t.total_steps)))
    # λ reported is the one used at the epoch's last iteration: λ0 (1 - (step-1)/I)
    for lam, step, total in seen:
        assert lam == pytest.approx(0.5 * (1 - (step - 1) / total))
    assert seen[-1][1] == seen[-1][2] == 12


def test_metrics_and_learning():
    out = fit(cfg(epochs=2, max_batches=None, arch_kwargs={}))
    assert out[TEST_ACC] > 0.5  # digits are learnable in two epochs: well above chance (0.1)
    for k in ("train_acc", "branch1_acc", "branch2_acc", "grad_norm_first", "firing_rate", "firing_rate_stage1",
              "synops", "epoch_time", "images_per_s"):
        assert k in out
    assert 0 < out["firing_rate"] < 1 and out["synops"] > 0 and out["grad_norm_first"] > 0


def test_vanilla_has_no_branch_metrics_and_method_names():
    out = fit(cfg(epochs=1, branches="none"))
    assert not any(k.startswith("branch") for k in out)
    assert cfg(branches="none").method() == "vanilla"
    assert cfg(lambda0=0.25, schedule="linear").method() == "evolutionary"
    assert cfg(lambda0=1.0, schedule="constant").method() == "shortcut"
    assert cfg(lambda0=0.3, schedule="cosine").method() == "searched"


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match=r"^lamda0: unknown key \(a typo\?\)$"):
        TrainConfig.from_dict({"lamda0": 0.1})


def test_event_data_trains(tmp_path):
    out = fit(cfg(dataset="digits-dvs", data_root=str(tmp_path), epochs=1, timesteps=3, max_batches=2))
    assert 0 <= out[TEST_ACC] <= 1


_HEAP_PROBE = """
import torch
x = torch.empty(40 * 2**20 // 4)  # 40 MiB: above glibc's largest automatic mmap threshold (32 MiB)
a = x.data_ptr()
for line in open("/proc/self/maps"):
    lo, hi = (int(v, 16) for v in line.split()[0].split("-"))
    if lo <= a < hi:
        print("heap" if line.rstrip().endswith("[heap]") else "mmap")
"""
_KEEP_FREED = {"MALLOC_MMAP_THRESHOLD_": "2147483647", "MALLOC_TRIM_THRESHOLD_": "2147483647"}


@pytest.mark.slow  # a fresh process per case
@pytest.mark.skipif(platform.libc_ver()[0] != "glibc" or not os.path.exists("/proc/self/maps"),
                    reason="glibc's malloc and Linux's /proc only")
@pytest.mark.parametrize("env,expected", [({}, "mmap"), (_KEEP_FREED, "heap")])
def test_the_documented_malloc_tunables_keep_large_blocks_in_the_heap(env, expected):
    # What a spec's env_vars (or the Dockerfile) give a trial process: large activations come
    # from the heap and stay there when freed, so the next step reuses their pages instead of
    # mapping and faulting in fresh ones (docs/performance.md). Checked in a fresh process:
    # glibc reads them at start-up.
    base = {k: v for k, v in os.environ.items() if k not in _KEEP_FREED}
    out = subprocess.run([sys.executable, "-c", _HEAP_PROBE], env={**base, **env}, capture_output=True,
                         text=True, check=True)
    assert out.stdout.split() == [expected], out.stderr[-2000:]


def test_auto_data_workers_follow_the_trials_cpus_on_cuda_and_are_none_on_cpu():
    from snn.training import MAX_AUTO_WORKERS, data_workers

    threads = torch.get_num_threads()
    try:
        for n, want in [(1, 0), (4, 3), (32, MAX_AUTO_WORKERS)]:
            torch.set_num_threads(n)  # what the trainable sets from the trial's CPUs
            assert data_workers("auto", torch.device("cuda")) == want
            assert data_workers("auto", torch.device("cpu")) == 0
    finally:
        torch.set_num_threads(threads)
    assert data_workers(3, torch.device("cpu")) == 3  # a count is taken as it is
    for bad in (-1, "many", True):
        with pytest.raises(ValueError, match="workers"):
            data_workers(bad, torch.device("cpu"))
    assert Trainer(cfg(device="cpu")).train_loader.num_workers == 0  # the default is auto: none on a CPU


def test_amp_uses_native_bf16_on_cpu_only_where_it_exists():
    from snn.training import amp_dtype

    native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert amp_dtype(torch.device("cpu")) == (torch.bfloat16 if native else None)
    assert Trainer(cfg(amp=False)).amp is False
    on = Trainer(cfg(amp=True))
    assert on.amp is native and on.amp_dtype == amp_dtype(torch.device("cpu"))
    if native:  # under autocast the convolutions run in bf16: the lever the benchmark measures
        x, _ = next(iter(on.train_loader))
        with torch.autocast("cpu", dtype=on.amp_dtype):
            assert on.model.conv1(on._inputs(x)).dtype == torch.bfloat16


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_learns_on_cuda_with_amp_and_the_fused_lif():
    # the defaults on a GPU: amp (bf16 or fp16 with gradient scaling), channels-last, Triton LIF
    out = fit(cfg(epochs=2, max_batches=None, arch_kwargs={}, device="cuda"))
    assert out[TEST_ACC] > 0.5 and torch.isfinite(torch.tensor(out[TRAIN_LOSS]))
    assert torch.backends.cudnn.benchmark


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_fused_adamw_on_cuda_makes_the_updates_of_torch_s_reference_adamw():
    from snn.training import adamw

    torch.manual_seed(0)
    w = [torch.randn(64, 32, device="cuda", requires_grad=True), torch.randn(10, device="cuda", requires_grad=True)]
    ref = [p.detach().clone().requires_grad_() for p in w]
    fused = adamw(w, 0.01, 0.02, torch.device("cuda"))
    plain = torch.optim.AdamW(ref, lr=0.01, weight_decay=0.02, foreach=False)  # one parameter at a time
    assert fused.defaults["fused"] and not plain.defaults["fused"]
    for _ in range(5):
        g = [torch.randn_like(p) for p in w]
        for params, opt in ((w, fused), (ref, plain)):
            for p, gi in zip(params, g):
                p.grad = gi.clone()
            opt.step()
    for a, b in zip(w, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert Trainer(cfg(device="cuda")).optimizer.defaults["fused"]


def test_epoch_metrics_are_those_of_each_step_read_back_at_the_epoch_end(monkeypatch):
    # the step's values stay on the device until the epoch ends; recorded here step by step
    # with plain reads, they must average to what the epoch reports
    import snn.training as training
    from torch import nn

    real_loss = training.losses.shortcut_loss
    steps = []

    def loss(out, y, lam, mode):
        value = real_loss(out, y, lam, mode)
        steps.append({"loss": value.item(), "n": y.shape[0], "correct": int((out.main.argmax(1) == y).sum())})
        return value

    monkeypatch.setattr(training.losses, "shortcut_loss", loss)
    t = Trainer(cfg(epochs=1))

    def before_step(optimizer, args, kwargs):  # after backward: every conv and linear weight's gradient norm
        steps[-1]["norms"] = {f"{n}.weight": m.weight.grad.norm().item() for n, m in t.model.named_modules()
                              if isinstance(m, (nn.Conv2d, nn.Linear))}

    t.optimizer.register_step_pre_hook(before_step)
    m = t.train_epoch()
    seen = sum(s["n"] for s in steps)
    assert len(steps) == 6 and m["_images"] == seen
    assert m[TRAIN_LOSS] == pytest.approx(sum(s["loss"] * s["n"] for s in steps) / seen, rel=1e-12)
    assert m["train_acc"] == sum(s["correct"] for s in steps) / seen
    assert set(t.layer_grad_norms) == set(steps[0]["norms"])
    for k, v in t.layer_grad_norms.items():
        assert v == pytest.approx(sum(s["norms"][k] for s in steps) / 6, rel=1e-5)
    assert m["grad_norm_first"] == t.layer_grad_norms["conv1.weight"] > 0


@pytest.mark.parametrize("each_step", [True, False])
def test_a_non_finite_loss_names_its_iteration_whether_read_at_once_or_at_the_epoch_end(monkeypatch, each_step):
    # CPU trials check every step; GPU trials read the losses back when the epoch ends
    import snn.training as training
    from snn.training import TrainingDiverged

    real_loss = training.losses.shortcut_loss
    calls = []

    def loss(*a):
        calls.append(1)
        value = real_loss(*a)
        return value * float("nan") if len(calls) == 9 else value  # iteration 8 (0-based), in epoch 2

    monkeypatch.setattr(training.losses, "shortcut_loss", loss)
    # the firing-rate guard off: its checks read the losses back too (see the next test)
    t = Trainer(cfg(epochs=3, stop={"silent_rate": None, "saturated_rate": None}))
    t._check_each_step = each_step
    t.run_epoch()
    with pytest.raises(TrainingDiverged, match="became nan at iteration 8 ") as e:
        t.train_epoch()
    assert (e.value.epoch, e.value.step) == (2, 8)
    assert t.step == (8 if each_step else 12)  # read at the epoch end, the rest of the epoch has run


def test_the_guard_stops_a_silent_network_within_its_first_epoch_and_names_the_stage():
    """A threshold no input reaches leaves every stage silent; with checks 4 times an
    epoch and a patience of 3, the trial stops at its third check, before the epoch ends."""
    from snn.training import TrainingStopped

    t = Trainer(cfg(epochs=3, v_threshold=50.0, stop={"checks_per_epoch": 4, "patience": 3}))
    with pytest.raises(TrainingStopped, match="the network is silent: stem fires 0 spikes") as e:
        t.run_epoch()
    steps = t.steps_per_epoch
    checks = [b for b in range(steps) if (b + 1) * 4 // steps > b * 4 // steps]  # 4 checks, spread over the epoch
    assert len(checks) == 4 and checks[-1] == steps - 1
    assert e.value.verdict.kind == "silent" and e.value.epoch == 1 and e.value.step == checks[2]
    assert e.value.epochs_done == pytest.approx((checks[2] + 1) / steps) and e.value.epochs_done < 1
    healthy = Trainer(cfg(epochs=1))  # the default neuron fires: the guard lets it train
    healthy.run_epoch()


def test_the_guards_check_names_a_divergence_first(monkeypatch):
    import snn.training as training
    from snn.training import TrainingDiverged

    real_loss = training.losses.shortcut_loss
    calls = []

    def loss(*a):
        calls.append(1)
        value = real_loss(*a)
        return value * float("nan") if len(calls) == 2 else value

    monkeypatch.setattr(training.losses, "shortcut_loss", loss)
    t = Trainer(cfg(epochs=1, stop={"checks_per_epoch": 100}))  # a check every iteration
    t._check_each_step = False
    with pytest.raises(TrainingDiverged, match="became nan at iteration 1 "):
        t.train_epoch()


def test_cuda_graphs_need_a_cuda_device():
    with pytest.raises(ValueError, match="cuda_graphs: needs a CUDA device, got cpu"):
        Trainer(cfg(device="cpu", cuda_graphs=True))


def test_the_loss_takes_lambda_as_a_device_scalar_as_a_captured_graph_reads_it():
    from snn import losses, models

    torch.manual_seed(3)
    out = models.ModelOutput(torch.randn(8, 10), [torch.randn(8, 10), torch.randn(8, 10)], (1, 2))
    y = torch.randint(0, 10, (8,))
    for mode in losses.MODES:
        torch.testing.assert_close(losses.shortcut_loss(out, y, torch.tensor(0.3), mode),
                                   losses.shortcut_loss(out, y, 0.3, mode))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_steps_make_the_eager_steps_updates():
    # 2 eager warm-up steps, the capture, then replays: float32, and deep supervision, whose
    # λ·CE rounds alike with λ a float or a device scalar, so both runs do the same arithmetic
    runs = {}
    for graphs in (False, True):
        t = Trainer(cfg(epochs=1, max_batches=6, arch_kwargs={}, device="cuda", amp=False, loss_mode="deep_supervision",
                        cuda_graphs=graphs))
        cudnn = torch.backends.cudnn
        cudnn.benchmark, cudnn.deterministic = False, True  # the same convolution algorithms in both runs
        try:
            runs[graphs] = (t, t.train_epoch())
        finally:
            cudnn.benchmark, cudnn.deterministic = True, False
    (eager, m0), (graphed, m1) = runs[False], runs[True]
    assert graphed._graph.graph is not None and graphed._graph.eager_steps == 2
    for (k, a), b in zip(eager.model.state_dict().items(), graphed.model.state_dict().values()):
        if a.is_floating_point():
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6, msg=k)
    assert m1[TRAIN_LOSS] == pytest.approx(m0[TRAIN_LOSS], rel=1e-4) and m1["train_acc"] == m0["train_acc"]
    assert m1["grad_norm_first"] == pytest.approx(m0["grad_norm_first"], rel=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_training_learns_across_a_partial_batch_and_epochs():
    # 1437 training digits at batch 64: 22 full batches and a partial one, which runs eagerly
    # and leaves its gradients where the graph's optimizer reads them; the replays go on after it
    t = Trainer(cfg(epochs=2, max_batches=None, arch_kwargs={}, device="cuda", cuda_graphs=True))
    metrics = [t.run_epoch() for _ in range(2)]
    assert t._graph.graph is not None and t.step == 46
    assert metrics[-1][TEST_ACC] > 0.5 and metrics[-1][TRAIN_LOSS] < metrics[0][TRAIN_LOSS]
