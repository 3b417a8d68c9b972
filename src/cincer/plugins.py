"""Extension points: your own selectors and inspectors under a name, and modules that register them."""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .errors import CincerError
from .inspect import INSPECTORS, as_inspector
from .select import POLICIES, SELECTORS, Ranking, SelectionContext, Selector

PLUGINS_ENV = "CINCER_PLUGINS"


def register_selector(name: str, *, policy: str = "ask", needs_gradients: bool = False,
                      factory: bool = False) -> Callable:
    """Register a counter-example selector under ``name`` (usable by ``Cleaner(selector=name)`` and
    ``cincer run --selector name``).

    By default the decorated function is the selector itself: ``fn(ctx: SelectionContext)`` returning
    a :class:`~cincer.select.Ranking` or one score per ``ctx.candidates`` (higher = better
    counter-example). With ``factory=True`` it is a factory ``fn(**params) -> Selector``, like the
    built-in ones. ``policy`` is ``ask`` (show the pair), ``drop`` or ``none`` (see cincer.select);
    ``needs_gradients`` marks a selector that differentiates ``ctx.model`` (a PyTorch model).
    """
    if policy not in POLICIES:
        raise CincerError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")

    def add(fn: Callable) -> Callable:
        if factory:
            SELECTORS.register(name)(fn)
            return fn

        def rank(ctx: SelectionContext) -> Ranking:
            out = fn(ctx)
            if isinstance(out, Ranking):
                return out
            scores = np.asarray(out, dtype=np.float64).reshape(-1)
            if len(scores) != len(ctx.candidates):
                raise CincerError(f"selector {name!r} returned {len(scores)} scores for {len(ctx.candidates)} "
                                  "candidates")
            return Ranking.from_scores(ctx.candidates, scores)

        def create() -> Selector:
            return Selector(rank, policy=policy, needs_gradients=needs_gradients)

        SELECTORS.register(name)(create)
        return fn

    return add


def register_inspector(name: str, *, factory: bool = False) -> Callable:
    """Register a suspicion test ``fn(probs, label, rng) -> bool`` under ``name`` (or, with
    ``factory=True``, a factory ``fn(**params)`` returning an :class:`~cincer.inspect.Inspector` or such a
    test)."""
    def add(fn: Callable) -> Callable:
        if factory:
            @functools.wraps(fn)  # keeps fn's signature, so its parameters are checked
            def create(**params: Any) -> Any:
                return as_inspector(fn(**params))
            INSPECTORS.register(name)(create)
        else:
            INSPECTORS.register(name)(lambda: as_inspector(fn))
        return fn

    return add


def load_plugins(modules: str | Sequence[str] | None = None) -> list[str]:
    """Import the user's modules that register selectors/inspectors: ``modules``, or the comma-separated
    list in ``$CINCER_PLUGINS``. Returns the names imported."""
    if modules is None:
        modules = os.environ.get(PLUGINS_ENV, "")
    if isinstance(modules, str):
        modules = [m.strip() for m in modules.split(",")]
    names = [m for m in modules if m]
    for module in names:
        try:
            importlib.import_module(module)
        except Exception as err:
            raise CincerError(f"{PLUGINS_ENV}: cannot import {module!r}: {type(err).__name__}: {err}") from None
    return names
