"""Reproductions of the published Momentum Attention experiments.

``run_experiment(name, out)`` trains an experiment's runs into a resumable results directory,
``load_results(out)`` reads it back and ``plot_results(out)`` draws its figure.
"""

from spectral_forensics.experiments.definitions import EXPERIMENTS, Experiment, RunSpec, get_experiment
from spectral_forensics.experiments.fit import PowerLawFit, fit_power_law
from spectral_forensics.experiments.plots import plot_experiment, plot_results
from spectral_forensics.experiments.runner import Results, load_results, read_records, run_experiment

__all__ = [
    "EXPERIMENTS",
    "Experiment",
    "PowerLawFit",
    "Results",
    "RunSpec",
    "fit_power_law",
    "get_experiment",
    "load_results",
    "plot_experiment",
    "plot_results",
    "read_records",
    "run_experiment",
]
