"""Experiments on top of the library (never imported by it): simulated runs with an oracle
(``simulate``), the paper's Q1/Q2/Q3 protocols and sweeps of them, their figures and tables, the
cleanlab comparison (``compare``) and the speed benchmarks with their naive baselines (``bench``)."""

from .protocols import (
                        METHODS,
                        QUESTIONS,
                        ExperimentConfig,
                        collect_summary,
                        method_config,
                        read_experiment,
                        run_method,
                        run_ranking,
)
from .sweep import Sweep, Task, load_sweep, run_experiment, run_sweep, run_tasks

__all__ = ["METHODS", "QUESTIONS", "ExperimentConfig", "Sweep", "Task", "collect_summary", "load_sweep",
           "method_config", "read_experiment", "run_experiment", "run_method", "run_ranking", "run_sweep",
           "run_tasks"]
