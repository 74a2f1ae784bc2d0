"""What every ``batchroute`` command shares: the consoles, error-to-exit-code mapping, bench loading."""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console

from batchroute.errors import BatchrouteError, ConfigError, InputError

out = Console()
err = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def fail(exc: BaseException, code: int = 1) -> typer.Exit:
    """Print ``exc`` as one red line on stderr and return the Exit to raise."""
    err.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True)
    return typer.Exit(code)


def handles_errors(fn: F) -> F:
    """Turn BatchrouteError into a one-line message and a non-zero exit (2 for bad config/input)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (ConfigError, InputError) as exc:
            raise fail(exc, 2) from exc
        except BatchrouteError as exc:
            raise fail(exc, 1) from exc

    return wrapper  # type: ignore[return-value]


def load_bench(name: str) -> Any:
    """Import ``bench/<name>.py`` from the project checkout (benchmarks are not part of the wheel)."""
    from batchroute.localcluster import ROOT

    path = ROOT / "bench" / f"{name}.py"
    if not path.is_file():
        raise ConfigError(f"benchmark {path} not found (benchmarks run from a source checkout)")
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
