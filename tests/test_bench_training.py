"""The training section of the benchmark at its smallest: files, finite figures, resume."""

import json
import math
import os

import pytest
import torch

pytest.importorskip("matplotlib")
pytest.importorskip("sklearn")
pytest.importorskip("tqdm")

from anode_ext.bench.cli import main  # noqa: E402
from anode_ext.bench.training_sweep import (  # noqa: E402
    PLAIN,
    TORCHDIFFEQ_ADJOINT,
    SweepRun,
    epoch_records,
    finite_figures,
    run_folder,
    sweep_runs,
    train_one,
    training_sweep,
)
from anode_ext.data import load_dataset, synthetic_dataset  # noqa: E402
from anode_ext.training.loop import Topology  # noqa: E402
from anode_ext.training.metrics import read_metrics  # noqa: E402


def test_quick_training_section(tmp_path):
    out = str(tmp_path / "report")
    assert main(["--quick", "--device", "cpu", "--sections", "training", "--out", out]) == 0
    results = json.load(open(os.path.join(out, "results.json")))
    summaries = results["training"]["runs"]
    assert len(summaries) == 2 and finite_figures(summaries)
    for s in summaries:
        assert s["complete_seeds"] == s["seeds"] == 2 and s["diverged_seeds"] == 0
        assert 0 <= s["final_accuracy"][0] <= 1 and s["saved_peak_bytes"] > 0
        assert [p["epoch"] for p in s["curves"]["test_accuracy"]] == [1]
    # One Euler step of size 1 is the residual block: the ODE network and the plain one
    # train alike from the same seed.
    ode, plain = summaries
    assert ode["curves"]["train_loss"] == plain["curves"]["train_loss"]
    assert os.path.getsize(os.path.join(out, "training_resnet.png")) > 1000
    report = open(os.path.join(out, "report.md")).read()
    assert "| resnet euler Nt=1 anode |" in report and f"| resnet {PLAIN} |" in report


def test_an_interrupted_sweep_resumes_where_it_stopped(tmp_path):
    data = synthetic_dataset(train=64, test=32)
    options = {"epochs": 1, "batch_size": 32, "dataset": "synthetic"}
    runs = [SweepRun("resnet", "direct", "euler", 1, width=0.0625), SweepRun("resnet", "anode", "euler", 1, width=0.0625)]
    calls = []

    def stop_at_the_second(run, seed, *args):
        calls.append((run.label, seed))
        return "stopped" if len(calls) == 2 else train_one(run, seed, *args)

    first = training_sweep(str(tmp_path), data, options, (0,), runs, Topology(), progress=False,
                           train=stop_at_the_second)
    assert first["stopped"] and len(calls) == 2
    root = os.path.join(str(tmp_path), "training")
    done = os.path.join(run_folder(root, runs[0], 0, options), "metrics.jsonl")
    before = os.stat(done).st_mtime_ns
    second = training_sweep(str(tmp_path), data, options, (0,), runs, Topology(), progress=False)
    assert not second["stopped"] and os.stat(done).st_mtime_ns == before, "a finished run is not trained again"
    assert [len(read_metrics(os.path.join(run_folder(root, r, 0, options), "metrics.jsonl"))) for r in runs] == [1, 1]
    assert all(s["complete_seeds"] == 1 and math.isfinite(s["final_accuracy"][0]) for s in second["runs"])
    # Other options are another sweep: nothing of this one is taken for it.
    longer = {**options, "epochs": 2}
    assert run_folder(root, runs[0], 0, longer) != run_folder(root, runs[0], 0, options)
    third = training_sweep(str(tmp_path), data, longer, (0,), runs[:1], Topology(), progress=False)
    assert [p["epoch"] for p in third["runs"][0]["curves"]["train_loss"]] == [1, 2]
    assert os.stat(done).st_mtime_ns == before


def test_an_epoch_recorded_twice_counts_once(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    lines = [{"epoch": 1, "v": "first"}, {"epoch": 1, "v": "again"}, {"epoch": 2, "v": "x"}, {"epoch": 3, "v": "y"}]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert [r["v"] for r in epoch_records(str(folder), 2)] == ["again", "x"]


def test_the_full_sweep_covers_the_papers_comparisons():
    runs = sweep_runs()
    labels = {r.label for r in runs}
    for model in ("sqnxt", "resnet"):
        for method in ("euler", "midpoint"):
            for steps in (1, 2):
                for mode in ("direct", "anode", "adjoint"):
                    assert f"{model} {method} Nt={steps} {mode}" in labels
        assert f"{model} midpoint Nt=2 anode, coupled" in labels and f"{model} {PLAIN}" in labels
    assert len({r.folder for r in runs}) == len(runs)
    assert any(r.mode == TORCHDIFFEQ_ADJOINT for r in runs) == _has_torchdiffeq()


def _has_torchdiffeq():
    try:
        import torchdiffeq  # noqa: F401
    except ImportError:
        return False
    return True


def test_worker_processes_train_like_one_process(tmp_path):
    # Workers load the dataset by name (options["dataset"]), with its default sizes.
    data = load_dataset("synthetic")
    options = {"epochs": 1, "batch_size": 32, "dataset": "synthetic"}
    runs = [SweepRun("resnet", "anode", "euler", 1, width=0.0625)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each worker runs: other thread counts round differently
    try:
        one = training_sweep(str(tmp_path / "one"), data, options, (0, 1), runs, Topology(), progress=False)
    finally:
        torch.set_num_threads(threads)
    two = training_sweep(str(tmp_path / "two"), data, options, (0, 1), runs, Topology(), progress=False, workers=2)
    assert two["runs"][0]["complete_seeds"] == 2
    assert two["runs"][0]["curves"] == one["runs"][0]["curves"]
