"""The training command: exact resume, clean stops, atomic checkpoints, argument errors."""

import json
import math
import os
import subprocess
import sys
import time
from dataclasses import replace

import pytest
import torch

pytest.importorskip("tqdm")
pytest.importorskip("matplotlib")

from anode_ext import Reversible, ReversibleGrad  # noqa: E402
from anode_ext.data import load_dataset, synthetic_dataset  # noqa: E402
from anode_ext.training import checkpoint as checkpoint_module  # noqa: E402
from anode_ext.training.loop import RunConfig, Topology, Trainer  # noqa: E402

TINY = dict(model="sqnxt", width=0.125, steps=2, batch_size=64, dataset="synthetic", num_classes=10,
            in_channels=3, progress=False)


def run_trainer(config, resume_from=None, stop_after=None):
    """Run a Trainer in-process; stop_after=(epoch, batch) simulates a signal there."""
    trainer = Trainer(config, synthetic_dataset(), Topology())
    if resume_from is not None:
        trainer.restore(checkpoint_module.load_checkpoint(resume_from))
    if stop_after is not None:
        trainer._stop_requested = lambda stop: (trainer.epoch, trainer.batch) == stop_after
    return trainer.run(), trainer


def read_lines(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def comparable(record):
    return {k: v for k, v in record.items() if k not in ("images_per_s", "epoch_seconds", "peak_memory_bytes")}


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_two_epochs_equal_one_plus_resume_plus_one(tmp_path):
    straight = RunConfig(**TINY, epochs=2, out=str(tmp_path / "straight"))
    os.makedirs(straight.out)
    assert run_trainer(straight)[0] == "finished"

    first = RunConfig(**TINY, epochs=1, out=str(tmp_path / "resumed"))
    os.makedirs(first.out)
    run_trainer(first)
    second = replace(first, epochs=2)
    assert run_trainer(second, resume_from=os.path.join(first.out, "checkpoint.pt"))[0] == "finished"

    a = torch.load(os.path.join(straight.out, "checkpoint.pt"), weights_only=True)
    b = torch.load(os.path.join(second.out, "checkpoint.pt"), weights_only=True)
    assert_same_state(a["model"], b["model"])
    assert a["epoch"] == b["epoch"] == 3
    for x, y in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(x["momentum_buffer"], y["momentum_buffer"])
    lines_a = [comparable(r) for r in read_lines(os.path.join(straight.out, "metrics.jsonl"))]
    lines_b = [comparable(r) for r in read_lines(os.path.join(second.out, "metrics.jsonl"))]
    assert lines_a == lines_b and len(lines_a) == 2


def test_stop_mid_epoch_then_resume_is_exact(tmp_path):
    straight = RunConfig(**TINY, epochs=2, out=str(tmp_path / "straight"))
    os.makedirs(straight.out)
    run_trainer(straight)
    stopped = RunConfig(**TINY, epochs=2, out=str(tmp_path / "stopped"))
    os.makedirs(stopped.out)
    outcome, trainer = run_trainer(stopped, stop_after=(2, 2))
    assert outcome == "stopped"
    state = torch.load(trainer.checkpoint_path, weights_only=True)
    assert (state["epoch"], state["batch"]) == (2, 2)
    assert run_trainer(stopped, resume_from=trainer.checkpoint_path)[0] == "finished"
    a = torch.load(os.path.join(straight.out, "checkpoint.pt"), weights_only=True)
    b = torch.load(trainer.checkpoint_path, weights_only=True)
    assert_same_state(a["model"], b["model"])
    assert [comparable(r) for r in read_lines(os.path.join(straight.out, "metrics.jsonl"))] == [
        comparable(r) for r in read_lines(os.path.join(stopped.out, "metrics.jsonl"))
    ]


def test_interrupted_write_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = str(tmp_path / "checkpoint.pt")
    checkpoint_module.save_atomically({"value": torch.ones(3)}, path)

    def broken_save(obj, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_module.torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        checkpoint_module.save_atomically({"value": torch.zeros(3)}, path)
    assert torch.equal(torch.load(path)["value"], torch.ones(3))


def cli(*args, cwd=None, **popen):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-m", "anode_ext.train", *args], cwd=cwd, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen,
    )


TINY_ARGS = ["--dataset", "synthetic", "--width", "0.125", "--batch-size", "16", "--no-progress", "--device", "cpu"]


@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
def test_signal_writes_a_checkpoint_and_exits_cleanly(tmp_path, signal_name):
    import signal

    out = str(tmp_path / "run")
    proc = cli(*TINY_ARGS, "--epochs", "50", "--out", out)
    for line in proc.stdout:
        if line.startswith("training "):
            break
    deadline = time.time() + 120
    while not os.path.exists(os.path.join(out, "checkpoint.pt")) and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(getattr(signal, signal_name))
    output = proc.stdout.read()
    assert proc.wait(timeout=120) == 0, output
    assert "stopped: checkpoint written" in output
    state = checkpoint_module.load_checkpoint(os.path.join(out, "checkpoint.pt"))
    assert state["epoch"] >= 1
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]


def run_cli(*args):
    proc = cli(*args)
    output = proc.communicate(timeout=300)[0]
    return proc.returncode, output


def test_bad_arguments_fail_before_training(tmp_path):
    out = str(tmp_path / "run")
    code, output = run_cli(*TINY_ARGS, "--model", "vgg", "--out", out)
    assert code != 0 and "unknown model 'vgg'; expected one of resnet, resnet_baseline, sqnxt, sqnxt_baseline" in output
    code, output = run_cli(*TINY_ARGS, "--steps", "0", "--out", out)
    assert code == 2 and "expected an integer >= 1, got 0" in output
    for flag, value, message in (("--lr", "inf", "expected a finite number > 0, got inf"),
                                 ("--momentum", "nan", "expected a finite number >= 0, got nan"),
                                 ("--weight-decay", "-1", "expected a finite number >= 0, got -1.0")):
        code, output = run_cli(*TINY_ARGS, flag, value, "--out", out)
        assert code == 2 and message in output, output
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    code, output = run_cli(*TINY_ARGS, "--out", str(blocker / "run"))
    assert code != 0 and "cannot write to the output folder" in output
    code, output = run_cli(*TINY_ARGS, "--resume", str(tmp_path / "missing.pt"), "--out", out)
    assert code != 0 and "no such file" in output
    assert not os.path.exists(os.path.join(out, "metrics.jsonl"))


def test_reversible_method_options(tmp_path):
    out = str(tmp_path / "run")
    for args, message in (
        (("--method", "reversible_midpoint", "--coupling", "0"), "coupling of a reversible method must be a real number in (0, 1], got 0.0"),
        (("--method", "reversible_midpoint", "--coupling", "many"), "expected a number in (0, 1], got 'many'"),
        (("--method", "reversible_rk7",), "invalid choice: 'reversible_rk7'"),
        (("--method", "midpoint", "--coupling", "0.9"), "--coupling goes with a reversible method such as --method reversible_midpoint"),
        (("--method", "midpoint", "--grad", "reversible"), "--grad reversible needs a reversible method such as --method reversible_midpoint"),
        (("--method", "reversible_midpoint", "--grad", "adjoint"), "--grad adjoint does not step a reversible method"),
        (("--method", "reversible_midpoint", "--grad", "reversible", "--rtol", "0"), "expected a finite number > 0, got 0"),
        (("--method", "reversible_midpoint", "--grad", "anode", "--rtol", "1e-3"), "--rtol goes with an adaptive method"),
    ):
        code, output = run_cli(*TINY_ARGS, *args, "--out", out)
        assert code != 0 and message in output, output
    assert not os.path.exists(out)
    config = RunConfig(**{**TINY, "method": "reversible_midpoint", "coupling": 0.9, "grad": "reversible", "epochs": 1,
                          "out": str(tmp_path / "in_process")})
    os.makedirs(config.out)
    status, trainer = run_trainer(config)
    assert status == "finished"
    blocks = [m for m in trainer.model.modules() if hasattr(m, "grad") and hasattr(m, "method")]
    assert blocks and all(b.method == Reversible("midpoint", coupling=0.9) and b.grad == ReversibleGrad() for b in blocks)
    (record,) = read_lines(os.path.join(config.out, "metrics.jsonl"))
    assert math.isfinite(record["train_loss"])
    with pytest.raises(ValueError, match="a coupling goes with a reversible method such as reversible_midpoint"):
        replace(config, method="midpoint").solve_method()


def test_resume_from_another_model_is_refused(tmp_path):
    out = str(tmp_path / "run")
    code, output = run_cli(*TINY_ARGS, "--epochs", "1", "--out", out)
    assert code == 0, output
    code, output = run_cli(*TINY_ARGS, "--epochs", "2", "--model", "resnet", "--out", out,
                           "--resume", os.path.join(out, "checkpoint.pt"))
    assert code != 0 and "was written for a different model: model='sqnxt' in the checkpoint but 'resnet' now" in output
    assert len(read_lines(os.path.join(out, "metrics.jsonl"))) == 1


def test_outputs_of_a_run(tmp_path):
    out = str(tmp_path / "run")
    code, output = run_cli(*TINY_ARGS, "--epochs", "2", "--out", out)
    assert code == 0, output
    records = read_lines(os.path.join(out, "metrics.jsonl"))
    assert [r["epoch"] for r in records] == [1, 2]
    for r in records:
        for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "images_per_s", "peak_memory_bytes"):
            assert isinstance(r[key], (int, float)) and r[key] >= 0
    assert os.path.getsize(os.path.join(out, "curves.png")) > 1000
    assert json.load(open(os.path.join(out, "config.json")))["model"] == "sqnxt"


def _probe_output_folder(out, barrier):
    from anode_ext.training.cli import _check_output_folder
    barrier.wait(timeout=120)
    for _ in range(1000):
        _check_output_folder(out)


def test_output_folder_check_of_processes_sharing_it(tmp_path):
    # The ranks of one torchrun job all check the same --out folder at the same moment.
    import multiprocessing
    out = str(tmp_path / "run")
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(4)
    processes = [context.Process(target=_probe_output_folder, args=(out, barrier), daemon=True) for _ in range(4)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    assert [process.exitcode for process in processes] == [0] * 4
    assert os.listdir(out) == []


def test_torchrun_two_processes(tmp_path):
    out = str(tmp_path / "run")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
         "-m", "anode_ext.train", *TINY_ARGS, "--epochs", "1", "--out", out],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    records = read_lines(os.path.join(out, "metrics.jsonl"))
    assert len(records) == 1 and records[0]["world_size"] == 2
    assert proc.stdout.count("epoch 1/1:") == 1  # metrics come from rank 0 only


def test_digits_split():
    pytest.importorskip("sklearn")
    data = load_dataset("digits")
    assert data.train_images.shape == (1437, 1, 32, 32) and data.test_images.shape == (360, 1, 32, 32)
    assert data.num_classes == 10 and set(data.test_labels.tolist()) == set(range(10))


class _RunsCode:
    """Unpickling this calls os.system: what a crafted checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_crafted_checkpoint_is_refused_unread(tmp_path):
    marker = tmp_path / "code_ran"
    path = tmp_path / "checkpoint.pt"
    torch.save({"config": {}, "model": _RunsCode(str(marker))}, path)
    with pytest.raises(ValueError, match=r"refused: the file holds an object of type \S*system, not only tensors"):
        checkpoint_module.load_checkpoint(str(path))
    assert not marker.exists()
    code, output = run_cli(*TINY_ARGS, "--resume", str(path), "--out", str(tmp_path / "run"))
    assert code != 0 and "refused" in output and not marker.exists()


def test_damaged_checkpoint_is_explained(tmp_path):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        checkpoint_module.load_checkpoint(str(path))
    torch.save({"model": {}}, path)
    with pytest.raises(ValueError, match="not an anode_ext training checkpoint .missing config"):
        checkpoint_module.load_checkpoint(str(path))


def poisoned(bad_sample):
    """The synthetic data with a NaN in one training image."""
    data = synthetic_dataset()
    data.train_images = data.train_images.clone()
    data.train_images[bad_sample, 0, 0, 0] = float("nan")
    return data


def test_nonfinite_loss_stops_and_keeps_the_last_checkpoint(tmp_path):
    from anode_ext.training.loop import NonFiniteError

    config = RunConfig(**TINY, epochs=2, out=str(tmp_path / "run"))
    os.makedirs(config.out)
    trainer = Trainer(config, synthetic_dataset(), Topology())
    assert trainer.run() == "finished"
    before = open(trainer.checkpoint_path, "rb").read()
    again = Trainer(replace(config, epochs=3), poisoned(5), Topology())
    again.restore(checkpoint_module.load_checkpoint(trainer.checkpoint_path))
    with pytest.raises(NonFiniteError, match=r"at epoch 3, batch \d+ of 4; training stopped .* written at epoch 3, batch 0\) "
                       r"is left as it was. Likely causes: a learning rate .*--lr 0.1"):
        again.run()
    assert open(trainer.checkpoint_path, "rb").read() == before
    assert all(torch.isfinite(p).all() for p in again.model.parameters())


def test_nonfinite_batches_can_be_skipped(tmp_path):
    config = RunConfig(**TINY, epochs=1, out=str(tmp_path / "run"), skip_nonfinite=1)
    os.makedirs(config.out)
    trainer = Trainer(config, poisoned(5), Topology())
    assert trainer.run() == "finished"
    assert trainer.skipped_nonfinite == 1
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    record = read_lines(os.path.join(config.out, "metrics.jsonl"))[0]
    assert record["train_loss"] == record["train_loss"]  # not NaN: the skipped batch is not counted
    code, output = run_cli(*TINY_ARGS, "--skip-nonfinite", "-1", "--out", str(tmp_path / "other"))
    assert code == 2 and "expected an integer >= 0, got -1" in output


def test_cli_exits_nonzero_on_divergence(tmp_path):
    out = str(tmp_path / "run")
    code, output = run_cli(*TINY_ARGS, "--epochs", "1", "--lr", "1e30", "--out", out)
    assert code == 1 and "non-finite loss or gradient at epoch 1, batch" in output
    assert not os.path.exists(os.path.join(out, "checkpoint.pt"))


def test_adaptive_method_options(tmp_path):
    out = str(tmp_path / "run")
    for args, message in (
        (("--method", "dopri5", "--steps", "4"), "--method dopri5 chooses its own steps; drop --steps"),
        (("--method", "midpoint", "--atol", "1e-3"), "--atol goes with an adaptive method"),
        (("--method", "dopri5", "--grad", "reversible"), "needs a reversible method such as --method reversible_rk4"),
        (("--method", "dopri5", "--coupling", "0.9"), "--coupling goes with a reversible method such as --method "
                                                       "reversible_rk4"),
        (("--method", "rk4", "--rtol", "1e-3"), "--rtol goes with an adaptive method"),
        (("--method", "tsit5", "--atol", "-1"), "expected a finite number > 0, got -1"),
    ):
        code, output = run_cli(*TINY_ARGS, *args, "--out", out)
        assert code != 0 and message in output, output
    assert not os.path.exists(out)
    config = RunConfig(**{**TINY, "method": "bosh3", "rtol": 1e-2, "atol": 1e-3, "epochs": 1,
                          "out": str(tmp_path / "in_process")})
    os.makedirs(config.out)
    status, trainer = run_trainer(config)
    assert status == "finished"
    blocks = [m for m in trainer.model.modules() if hasattr(m, "grad") and hasattr(m, "method")]
    assert blocks and all(b.method.name == "bosh3" and b.method.rtol == 1e-2 and b.method.atol == 1e-3 for b in blocks)
    (record,) = read_lines(os.path.join(config.out, "metrics.jsonl"))
    assert math.isfinite(record["train_loss"])
    assert replace(config, rtol=None, atol=None).solve_method().rtol == 1e-3
