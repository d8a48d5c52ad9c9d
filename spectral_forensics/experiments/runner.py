"""Run an experiment's training runs into a results directory, resumably.

A results directory holds::

    experiment.json   name, scale, settings, seeds and γ list (written before the first run)
    runs.jsonl        one JSON record per finished run, appended when the run ends
    summary.json      the experiment's summary of every finished run (rewritten after each run)
    runs/<run_id>/    the training run directories (checkpoints, metrics)
    figures/          PNGs written by ``experiment plot``

A run whose record is in ``runs.jsonl`` is skipped, so rerunning the same command after an
interruption continues the sweep. A run interrupted half-way resumes from its last checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from spectral_forensics.experiments.definitions import RunSpec, get_experiment, parameter_count

logger = logging.getLogger(__name__)

EXPERIMENT_FILE = "experiment.json"
RUNS_FILE = "runs.jsonl"
SUMMARY_FILE = "summary.json"
FORMAT_VERSION = 1


@dataclass
class Results:
    """The contents of a results directory."""

    path: Path
    experiment: str
    meta: dict[str, Any]
    records: list[dict[str, Any]]
    summary: dict[str, Any] | None


def check_gammas(gammas: Any) -> list[float]:
    """Check that a γ list is non-empty, finite, >= 0 and without repeats, and return it sorted."""
    if isinstance(gammas, (int, float)):
        gammas = [gammas]
    values = list(gammas)
    if not values:
        raise ValueError("the γ list is empty; give at least one γ >= 0, e.g. --gammas 0,1,4")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"γ={value!r} is not valid; every γ must be a finite number >= 0")
    if len(set(values)) != len(values):
        raise ValueError(f"the γ list {values} repeats a value; give each γ once")
    return sorted(float(v) for v in values)


def read_records(path: Path) -> list[dict[str, Any]]:
    """Read ``runs.jsonl``. A line that is not a run record raises ValueError with its number."""
    records = []
    if not path.exists():
        return records
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"{path}:{number} is not valid JSON ({error.msg} at column {error.colno}); the line is "
                    "corrupt. Delete that "
                    "line to rerun its run, or restore the file"
                ) from None
            if not isinstance(record, dict) or not {"run_id", "labels", "accuracy", "loss"} <= set(record):
                raise ValueError(
                    f"{path}:{number} is not a run record (it needs run_id, labels, accuracy and loss); "
                    "delete that line to rerun its run, or restore the file"
                )
            records.append(record)
    return records


def load_results(path: str | Path) -> Results:
    """Load a results directory written by :func:`run_experiment`."""
    path = Path(path)
    meta_path = path / EXPERIMENT_FILE
    if not meta_path.is_file():
        raise ValueError(f"{str(path)!r} is not an experiment results directory: it has no {EXPERIMENT_FILE}")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{meta_path} is not valid JSON ({error.msg} at line {error.lineno}); restore it") from None
    if not isinstance(meta, dict) or "experiment" not in meta:
        raise ValueError(f"{meta_path} does not name its experiment; restore it")
    summary_path = path / SUMMARY_FILE
    summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.is_file() else None
    return Results(path, meta["experiment"], meta, read_records(path / RUNS_FILE), summary)


def _check_directory(out: Path, name: str, scale: str, settings: dict[str, Any]) -> dict[str, Any] | None:
    """Return the saved metadata of a compatible results directory, None for a new one."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"results path {str(out)!r} is a file; choose a directory for --out")
    if not out.exists():
        return None
    if not (out / EXPERIMENT_FILE).is_file():
        if any(out.iterdir()):
            raise ValueError(
                f"{str(out)!r} is not empty and contains no {EXPERIMENT_FILE}; choose a new or empty --out"
            )
        return None
    meta = load_results(out).meta
    if meta["experiment"] != name:
        raise ValueError(
            f"{str(out)!r} contains results of experiment {meta['experiment']!r}, not {name!r}; choose another --out"
        )
    if meta.get("scale") != scale or meta.get("settings") != settings:
        saved = meta.get("settings", {})
        differing = sorted(
            {f"{part}.{key}" for part in ("train", "params") for key in
             set(saved.get(part, {})) | set(settings.get(part, {}))
             if saved.get(part, {}).get(key) != settings.get(part, {}).get(key)}
        )
        raise ValueError(
            f"{str(out)!r} contains {name} results at scale {meta.get('scale')!r} with other settings "
            f"({', '.join(differing) or 'scale'}); resume with the same scale and --set values, or choose another --out"
        )
    return meta


def _write_json_atomic(path: Path, data: Any) -> None:
    from spectral_forensics.train import write_json_atomic

    write_json_atomic(path, data)


def _train_config(settings: dict[str, Any], spec: RunSpec, run_dir: Path):
    from spectral_forensics.train import TrainConfig

    values = {**settings["train"], **spec.train, "out_dir": str(run_dir)}
    return TrainConfig.from_dict(values)


def _audit_run(run_dir: Path, window: int = 256, n_windows: int = 8, nperseg: int = 64) -> dict[str, Any]:
    """Placement audit of a trained momentum model: the r of its native measurement.

    The audit measures the shear as a filter, which needs Welch segments much longer than the
    task sequences (short segments leak and drop the coherence below the audit's threshold).
    The position limit is lifted for the audit only: RoPE and the shear are defined at any
    position, and the measurement does not use the model's predictions.
    """
    import numpy as np

    from spectral_forensics.audit import audit_rope_placement, random_windows
    from spectral_forensics.models import load_model

    from spectral_forensics.train import _transformers_progress_off

    with _transformers_progress_off():
        loaded = load_model(str(run_dir))
    config = loaded.hf_model.config
    config.max_position_embeddings = max(config.max_position_embeddings, window)
    windows = random_windows(config.vocab_size, n_windows, window, seed=0)
    audit = audit_rope_placement(loaded, windows, nperseg=nperseg, progress=False)
    measurement = audit.measurements[0]
    r = np.asarray(measurement.r, dtype=float)
    verdicts = {str(v): int(np.sum(measurement.verdict == v)) for v in np.unique(measurement.verdict)}
    return {"mean_r": float(np.nanmean(r)) if np.isfinite(r).any() else None, "r": r.tolist(),
            "verdicts": verdicts, "nperseg": nperseg, "windows": n_windows, "window": window}


def execute_run(settings: dict[str, Any], spec: RunSpec, run_dir: str, threads: int | None = None) -> dict[str, Any]:
    """Train (or resume) one run and return its record."""
    import torch

    from spectral_forensics.train import latest_checkpoint, train

    if threads:
        torch.set_num_threads(threads)
    run_dir = Path(run_dir)
    resume = latest_checkpoint(run_dir) is not None
    if run_dir.exists() and not resume:
        # A run that stopped before its first checkpoint left nothing worth keeping.
        shutil.rmtree(run_dir)
    config = _train_config(settings, spec, run_dir)
    started = time.perf_counter()
    result = train(config, resume=resume, progress=False)
    record = {
        "run_id": spec.run_id,
        "labels": spec.labels,
        "accuracy": result.eval.get("accuracy"),
        "loss": result.eval.get("loss"),
        "chance_accuracy": result.chance_accuracy,
        "steps": result.step,
        "parameters": parameter_count({**settings["train"], **spec.train}),
        "seconds": time.perf_counter() - started,
        "resumed": resume,
    }
    if spec.audit:
        record["audit"] = _audit_run(run_dir)
    return record


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """Stop a pool after an error or an interrupt without waiting for its runs.

    Queued runs are dropped and running ones are terminated; they resume from their last
    checkpoint on the next call. Waiting instead would keep an interrupted command alive until
    every submitted run had trained to the end, and those runs would not be recorded.
    """
    # ProcessPoolExecutor has no public way to stop running work; _processes maps pid -> Process.
    processes = list((getattr(pool, "_processes", None) or {}).values())
    for process in processes:
        process.terminate()
    # The pool's own thread notices the dead workers, fails their runs and reaps them.
    pool.shutdown(wait=True, cancel_futures=True)


def _join_processes(settings: dict[str, Any], world: int) -> bool:
    """Under torchrun, create the process group once for every run; True if this call made it.

    train() reuses an existing group instead of creating and destroying one per run, which
    hangs on the second run under torchrun's shared store.
    """
    import torch
    import torch.distributed as dist

    if world == 1 or dist.is_initialized():
        return False
    cuda = str(settings["train"].get("device", "cpu")).startswith("cuda")
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    # Every process has read runs.jsonl before rank 0 appends to it.
    dist.barrier()
    return True


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def run_experiment(
    name: str,
    out: str | Path,
    *,
    scale: str = "cpu",
    seeds: int | None = None,
    gammas: Any = None,
    overrides: dict[str, Any] | None = None,
    jobs: int = 1,
    progress: bool = True,
) -> Results:
    """Run every missing run of an experiment into ``out`` and write its summary.

    Parameters
    ----------
    name : str
        Experiment name (see :data:`spectral_forensics.experiments.EXPERIMENTS`).
    out : str or path
        Results directory; an existing one of the same experiment, scale and settings resumes.
    scale : {"cpu", "gpu"}
        Settings preset.
    seeds : int, optional
        Seeds per setting (default: the experiment's for the scale).
    gammas : list of float, optional
        γ values of experiments that sweep γ (default 0, 0.25, 0.5, 1, 2, 3, 4, 5, 6, 8).
    overrides : dict, optional
        Experiment parameters or training fields replacing the scale's values.
    jobs : int
        Runs trained at once in separate processes, each with ``cpu_count // jobs`` threads.
        Under ``torchrun`` every process trains every run together (data parallel) and
        ``jobs`` must be 1.

    Raises
    ------
    ValueError
        Unknown experiment, scale, setting or γ list, or an incompatible results directory,
        before anything is written.
    """
    from spectral_forensics.train import build_task

    experiment = get_experiment(name)
    settings = experiment.settings(scale, overrides)
    if experiment.sweeps_gamma:
        gammas = check_gammas(gammas if gammas is not None else [0.0, 0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0])
    elif gammas is not None:
        raise ValueError(
            f"experiment {name!r} does not sweep γ; set its coupling with --set momentum_gamma=VALUE"
        )
    else:
        gammas = []
    seeds = experiment.default_seeds.get(scale, 3) if seeds is None else seeds
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds={seeds!r} is not valid; give a whole number of seeds >= 1")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs={jobs!r} is not valid; give a whole number >= 1")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and jobs > 1:
        raise ValueError(f"jobs={jobs} cannot be combined with torchrun (WORLD_SIZE={world}); use jobs=1")

    device = str(settings["train"].get("device", "cpu"))
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ValueError(
                f"scale {scale!r} trains on device={device!r}, but this machine has no CUDA device; "
                "use --scale cpu, or --set device=cpu to run the larger settings on the CPU"
            )
    out = Path(out)
    meta = _check_directory(out, name, scale, settings)
    specs = experiment.runs(settings, gammas, seeds)
    # Every run's settings and task are checked before anything is written. A task that cannot
    # be built, such as a sequence too short for its pairs, so fails here and not mid-sweep.
    checked_tasks = set()
    for spec in specs:
        config = _train_config(settings, spec, out / "runs" / spec.run_id)
        config.validate()
        task_key = json.dumps([config.task, config.seq_len, config.vocab_size, config.depth, config.text,
                               config.task_options, config.seed], sort_keys=True)
        if task_key not in checked_tasks:
            build_task(config)
            checked_tasks.add(task_key)
    records = read_records(out / RUNS_FILE)
    done = {r["run_id"] for r in records}
    todo = [s for s in specs if s.run_id not in done]
    logger.info("%s: %d runs, %d finished, %d to run", name, len(specs), len(specs) - len(todo), len(todo))

    group = _join_processes(settings, world)
    if _rank() == 0:
        out.mkdir(parents=True, exist_ok=True)
        previous = meta or {}
        _write_json_atomic(out / EXPERIMENT_FILE, {
            "format": FORMAT_VERSION,
            "experiment": name,
            "description": experiment.description,
            "published_claim": experiment.claim,
            "scale": scale,
            "settings": settings,
            "seeds": max(seeds, previous.get("seeds", 0)),
            "gammas": sorted(set(gammas) | set(previous.get("gammas", []))),
        })

    def finish(record: dict[str, Any]) -> None:
        records.append(record)
        if _rank() != 0:
            return
        logger.info("%s: finished %s, accuracy %.4f, loss %.4f, %.0f s", name, record["run_id"],
                    record["accuracy"], record["loss"], record["seconds"])
        with open(out / RUNS_FILE, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        _write_json_atomic(out / SUMMARY_FILE, experiment.summarise(records, settings))

    bar = tqdm(total=len(specs), initial=len(specs) - len(todo), desc=name, unit="run",
               disable=not progress or _rank() != 0)
    try:
        if jobs == 1:
            for spec in todo:
                bar.set_postfix_str(spec.run_id)
                finish(execute_run(settings, spec, str(out / "runs" / spec.run_id)))
                bar.update(1)
        else:
            import multiprocessing

            threads = max(1, (os.cpu_count() or 1) // jobs)
            context = multiprocessing.get_context("spawn")
            pool = ProcessPoolExecutor(max_workers=jobs, mp_context=context)
            try:
                futures = {pool.submit(execute_run, settings, spec, str(out / "runs" / spec.run_id), threads): spec
                           for spec in todo}
                for future in as_completed(futures):
                    finish(future.result())
                    bar.update(1)
            except BaseException:
                _stop_workers(pool)
                raise
            pool.shutdown()
    finally:
        bar.close()
        if group:
            import torch.distributed as dist

            dist.destroy_process_group()
    if _rank() == 0 and not todo:
        _write_json_atomic(out / SUMMARY_FILE, experiment.summarise(records, settings))
    if _rank() != 0:
        # Only rank 0 evaluates, so the other processes hold no metrics to summarise.
        return Results(out, name, {}, [], None)
    return Results(out, name, json.loads((out / EXPERIMENT_FILE).read_text()), records,
                   experiment.summarise(records, settings))
