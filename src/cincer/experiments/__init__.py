"""Experiments on top of the library (never imported by it): the paper's Q1/Q2/Q3 protocols,
sweeps of them, and the figures and tables."""

from .protocols import (METHODS, QUESTIONS, ExperimentConfig, collect_summary, method_config, read_experiment,
                        run_experiment, run_method, run_ranking)
from .sweep import Sweep, Task, load_sweep, run_sweep, run_tasks

__all__ = ["METHODS", "QUESTIONS", "ExperimentConfig", "Sweep", "Task", "collect_summary", "load_sweep",
           "method_config", "read_experiment", "run_experiment", "run_method", "run_ranking", "run_sweep",
           "run_tasks"]
