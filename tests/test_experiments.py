"""Experiment reproductions on tiny settings: end to end, resume, fits, figures and bad input."""

import json
import math

import numpy as np
import pytest
import torch

from spectral_forensics.cli import main
from spectral_forensics.experiments import (
    EXPERIMENTS,
    fit_power_law,
    load_results,
    plot_results,
    run_experiment,
)
from spectral_forensics.experiments.fit import crossing, refined_argmax

TINY = {"steps": 2, "eval_every": 2, "eval_batches": 1, "batch_size": 4, "d_model": 16, "heads": 2, "log_every": 1}
TINY_BY_NAME = {
    "single-layer-induction": ({"seq_len": 16, "vocab_size": 16}, [0.0, 1.0]),
    "depth-scaling": ({"seq_len": 12, "vocab_size": 16, "depths": [1, 2, 3]}, [0.0, 1.0, 2.0]),
    "icl-chain": ({"chain_depths": [2, 3]}, None),
    "rope-placement": ({"chain_depths": [2, 3]}, None),
    "language-model": ({"seq_len": 16, "layers": 1}, None),
}


def tiny_run(name, out, **kwargs):
    extra, gammas = TINY_BY_NAME[name]
    return run_experiment(name, out, seeds=1, gammas=gammas, overrides={**TINY, **extra}, progress=False, **kwargs)


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_each_experiment_runs_and_plots(name, tmp_path):
    results = tiny_run(name, tmp_path / name)
    meta = json.loads((tmp_path / name / "experiment.json").read_text())
    assert meta["experiment"] == name
    assert meta["scale"] == "cpu"
    lines = (tmp_path / name / "runs.jsonl").read_text().splitlines()
    assert len(lines) == len(results.records) > 0
    for record in results.records:
        assert 0.0 <= record["accuracy"] <= 1.0
        assert math.isfinite(record["loss"])
        assert record["steps"] == 2
    summary = json.loads((tmp_path / name / "summary.json").read_text())
    assert summary == json.loads(json.dumps(results.summary))
    (png,) = plot_results(tmp_path / name)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_summary_contents(tmp_path):
    sli = tiny_run("single-layer-induction", tmp_path / "sli")
    assert set(sli.summary["by_gamma"]) == {"0", "1"}
    assert sli.summary["best_gamma"] in (0.0, 1.0)
    assert sli.summary["baseline_two-layer"]["n"] == 1
    assert sli.summary["baseline_smeared-key"]["n"] == 1
    placement = tiny_run("rope-placement", tmp_path / "rp")
    audited = [r for r in placement.records if r["labels"]["model"] != "standard"]
    assert audited
    assert all(-1.0 <= r["audit"]["mean_r"] <= 1.0 for r in audited)
    assert placement.summary["rope_theta"] == 10000.0
    lm = tiny_run("language-model", tmp_path / "lm")
    assert 2.0 <= lm.summary["parameter_ratio"] <= 3.6


def test_rerun_skips_finished_resumes_missing(tmp_path):
    out = tmp_path / "sli"
    first = tiny_run("single-layer-induction", out)
    lines = (out / "runs.jsonl").read_text().splitlines()
    # Finished runs are skipped: nothing is appended and no run directory changes.
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "runs").iterdir()}
    again = tiny_run("single-layer-induction", out)
    assert (out / "runs.jsonl").read_text().splitlines() == lines
    assert {p.name: p.stat().st_mtime_ns for p in (out / "runs").iterdir()} == stamps
    assert len(again.records) == len(first.records)
    # A run whose record is missing (interrupted after its checkpoint) resumes from it.
    (out / "runs.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    missing = json.loads(lines[-1])["run_id"]
    third = tiny_run("single-layer-induction", out)
    redone = [r for r in third.records if r["run_id"] == missing]
    assert len(redone) == 1
    assert redone[0]["resumed"] is True
    assert len((out / "runs.jsonl").read_text().splitlines()) == len(lines)


def test_more_seeds_extend_a_sweep(tmp_path):
    out = tmp_path / "sli"
    tiny_run("single-layer-induction", out)
    extra, gammas = TINY_BY_NAME["single-layer-induction"]
    results = run_experiment("single-layer-induction", out, seeds=2, gammas=gammas, overrides={**TINY, **extra},
                             progress=False)
    assert results.summary["by_gamma"]["1"]["n"] == 2


def test_power_law_fit_recovers_known_parameters():
    n = np.array([1, 2, 3, 4, 6], dtype=float)
    exact = fit_power_law(n, 4.17 * n**-0.74)
    assert exact.a == pytest.approx(4.17, rel=1e-6)
    assert exact.b == pytest.approx(0.74, rel=1e-6)
    rng = np.random.default_rng(0)
    sigma = np.full(5, 0.05)
    noisy = fit_power_law(n, 4.17 * n**-0.74 + rng.normal(0, 0.05, 5), sigma)
    assert noisy.a_ci[0] < 4.17 < noisy.a_ci[1]
    assert noisy.b_ci[0] < 0.74 < noisy.b_ci[1]
    assert abs(noisy.a - 4.17) < 0.2
    assert abs(noisy.b - 0.74) < 0.1
    with pytest.raises(ValueError, match="at least 3 points"):
        fit_power_law([1, 2], [1, 0.5])


def test_transition_and_argmax_helpers():
    x = np.array([0.0, 1.0, 2.0, 4.0])
    assert crossing(x, np.array([0.0, 0.2, 0.6, 0.8]), 0.4) == pytest.approx(1.5)
    assert crossing(x, np.array([0.0, 0.1, 0.1, 0.1]), 0.5) is None
    # A parabola sampled on a grid peaks between the grid points.
    grid = np.array([0.0, 1.0, 2.0, 3.0])
    assert refined_argmax(grid, -((grid - 1.3) ** 2)) == pytest.approx(1.3)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": "no-such-experiment"}, "experiment 'no-such-experiment' is not known"),
        ({"scale": "tpu"}, "scale='tpu' is not known"),
        ({"gammas": [0, -1]}, "γ=-1 is not valid"),
        ({"gammas": [0, float("nan")]}, "γ=nan is not valid"),
        ({"gammas": []}, "the γ list is empty"),
        ({"gammas": [1, 1]}, "repeats a value"),
        ({"overrides": {"no_such_key": 1}}, "setting 'no_such_key' is not known"),
        ({"overrides": {"lr": -1}}, "lr=-1"),
        ({"seeds": 0}, "seeds=0 is not valid"),
        ({"name": "depth-scaling", "gammas": [1.0], "overrides": {"seq_len": 16, "task_options": {"num_pairs": 10}}},
         "seq_len=16 is too short for 10 pairs"),
        ({"name": "depth-scaling", "overrides": {"depths": []}}, r"depths=\[\] is not valid"),
        ({"name": "depth-scaling", "overrides": {"depths": "[1,2"}}, "give a non-empty JSON list"),
        ({"name": "language-model", "gammas": None, "overrides": {"param_ratio": 0.5}}, "param_ratio=0.5"),
        pytest.param({"scale": "gpu", "overrides": {}}, "has no CUDA device",
                     marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")),
    ],
)
def test_bad_arguments_fail_before_writing(tmp_path, kwargs, message):
    arguments = {"name": "single-layer-induction", "gammas": [0.0], "overrides": dict(TINY), "progress": False, **kwargs}
    name = arguments.pop("name")
    with pytest.raises(ValueError, match=message):
        run_experiment(name, tmp_path / "out", **arguments)
    assert not (tmp_path / "out").exists()


def test_foreign_results_directory_rejected(tmp_path):
    out = tmp_path / "sli"
    tiny_run("single-layer-induction", out)
    with pytest.raises(ValueError, match="contains results of experiment 'single-layer-induction'"):
        tiny_run("icl-chain", out)
    extra, gammas = TINY_BY_NAME["single-layer-induction"]
    with pytest.raises(ValueError, match=r"other settings \(train.steps\)"):
        run_experiment("single-layer-induction", out, seeds=1, gammas=gammas,
                       overrides={**TINY, **extra, "steps": 3}, progress=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty and contains no experiment.json"):
        tiny_run("single-layer-induction", tmp_path / "other")


def test_corrupt_line_reports_number(tmp_path):
    out = tmp_path / "sli"
    tiny_run("single-layer-induction", out)
    lines = (out / "runs.jsonl").read_text().splitlines()
    (out / "runs.jsonl").write_text("\n".join([lines[0], lines[1][:20]] + lines[2:]) + "\n")
    with pytest.raises(ValueError, match=r"runs\.jsonl:2 is not valid JSON"):
        tiny_run("single-layer-induction", out)
    with pytest.raises(ValueError, match=r"runs\.jsonl:2 is not valid JSON"):
        plot_results(out)
    (out / "runs.jsonl").write_text("\n".join([lines[0], '{"run_id": "x"}'] + lines[2:]) + "\n")
    with pytest.raises(ValueError, match=r"runs\.jsonl:2 is not a run record"):
        load_results(out)


def test_fixed_gamma_experiment_rejects_gammas(tmp_path):
    with pytest.raises(ValueError, match="does not sweep γ"):
        run_experiment("icl-chain", tmp_path / "out", gammas=[1.0], progress=False)


def test_command_line(tmp_path, capsys):
    assert main(["experiment", "list"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in EXPERIMENTS)
    assert "4.17" in listed
    settings = [item for key, value in {**TINY, "seq_len": 16, "vocab_size": 16}.items()
                for item in ("--set", f"{key}={value}")]
    out = tmp_path / "sli"
    assert main(["experiment", "run", "single-layer-induction", "--gammas", "0,2", "--seeds", "1", "--quiet",
                 "--out", str(out), *settings]) == 0
    assert "4 finished runs" in capsys.readouterr().out
    assert main(["experiment", "plot", str(tmp_path), "--out", str(tmp_path / "figures")]) == 0
    assert (tmp_path / "figures" / "single-layer-induction.png").is_file()
    assert main(["experiment", "run", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "is not known" in capsys.readouterr().err
    assert main(["experiment", "plot", str(tmp_path / "missing")]) == 2


def test_notebook_05_recorded_results(tmp_path):
    from conftest import REPO, execute_notebook

    notebook = execute_notebook("05_reproducing_the_paper.ipynb",
                                {"SF_RESULTS": str(REPO / "docs" / "results"), "SF_FIGURES": str(tmp_path)})
    text = "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.outputs)
    assert "single-layer-induction: 36 runs" in text
    assert "transition γ" in text
    images = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) == len(EXPERIMENTS)
    assert sorted(p.name for p in tmp_path.glob("*.png")) == sorted(f"{name}.png" for name in EXPERIMENTS)


def test_stop_workers_ends_pool():
    import multiprocessing
    import time
    from concurrent.futures import ProcessPoolExecutor

    from spectral_forensics.experiments.runner import _stop_workers

    pool = ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn"))
    futures = [pool.submit(time.sleep, 60) for _ in range(4)]
    while not all(f.running() for f in futures[:2]):
        time.sleep(0.05)
    processes = list(pool._processes.values())
    started = time.perf_counter()
    _stop_workers(pool)
    assert time.perf_counter() - started < 15
    assert all(not p.is_alive() for p in processes)
    # Queued runs are cancelled or fail with the broken pool; none completes.
    assert not any(f.done() and not f.cancelled() and f.exception() is None for f in futures)


def test_outputs_default_file_mode(tmp_path):
    import os

    out = tmp_path / "sli"
    tiny_run("single-layer-induction", out)
    (png,) = plot_results(out)
    mask = os.umask(0)
    os.umask(mask)
    for path in (out / "experiment.json", out / "summary.json", out / "runs.jsonl", png):
        assert path.stat().st_mode & 0o777 == 0o666 & ~mask, path


def test_plot_rejects_colliding_figures(tmp_path):
    tiny_run("single-layer-induction", tmp_path / "a")
    tiny_run("single-layer-induction", tmp_path / "b")
    with pytest.raises(ValueError, match="several results directories of single-layer-induction"):
        plot_results(tmp_path, tmp_path / "figures")
    assert not (tmp_path / "figures").exists()


def test_no_transition_without_a_rise():
    from spectral_forensics.experiments.definitions import get_experiment

    records = [{"run_id": f"g{g}", "labels": {"model": "momentum", "gamma": g, "seed": 0}, "accuracy": 0.02,
                "loss": 4.0, "chance_accuracy": 0.016} for g in (0.0, 1.0, 2.0)]
    summary = get_experiment("single-layer-induction").summarise(records, {})
    assert summary["transition_gamma"] is None
    assert summary["onset_gamma"] is None


def test_gamma_list_rejects_empty_items(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["experiment", "run", "single-layer-induction", "--gammas", "0,,2", "--out", str(tmp_path / "x")])
    assert "invalid γ list" in capsys.readouterr().err
