"""batchroute: route large LLM workloads to the right model, and account for every cent.

The public API lives here; everything heavy (the embedding model, FAISS, Celery) loads lazily.

    from batchroute import JobOptions, submit_job, job_status, iter_results
    report = submit_job("prompts.jsonl", JobOptions(latency_class="batch", tags={"team": "legal"}))
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from batchroute.errors import (
    AnalyzerError,
    BatchrouteError,
    BrokerError,
    BudgetExceeded,
    ConfigError,
    InputError,
    NotFoundError,
    ProviderAuthError,
    ProviderBadRequest,
    ProviderError,
    ProviderProtocolError,
    ProviderRateLimited,
    ProviderTimeout,
    ProviderUnavailable,
    Retry,
    RoutingError,
    StorageError,
)

__version__ = "0.1.0"

# name -> module; imported on first attribute access so `import batchroute` stays light.
_LAZY = {
    "Settings": "batchroute.settings", "get_settings": "batchroute.settings",
    "Registry": "batchroute.registry", "ModelSpec": "batchroute.registry",
    "load_registry": "batchroute.registry", "get_registry": "batchroute.registry",
    "JobOptions": "batchroute.jobs", "SubmitReport": "batchroute.jobs", "submit_job": "batchroute.jobs",
    "job_status": "batchroute.jobs", "iter_results": "batchroute.jobs", "write_results": "batchroute.jobs",
    "Analyzer": "batchroute.analyzer", "Analysis": "batchroute.analyzer", "get_analyzer": "batchroute.analyzer",
    "RouteInput": "batchroute.routing", "RoutePolicy": "batchroute.routing", "Decision": "batchroute.routing",
    "decide": "batchroute.routing", "weights_for": "batchroute.routing",
    "reconcile": "batchroute.reconciler", "migrate": "batchroute.db",
    "explain_request": "batchroute.explain", "run_demo": "batchroute.demo",
    "SimConfig": "batchroute.simprovider", "start_sim_server": "batchroute.simprovider",
}

if TYPE_CHECKING:
    from batchroute.analyzer import Analysis, Analyzer, get_analyzer
    from batchroute.db import migrate
    from batchroute.demo import run_demo
    from batchroute.explain import explain_request
    from batchroute.jobs import JobOptions, SubmitReport, iter_results, job_status, submit_job, write_results
    from batchroute.reconciler import reconcile
    from batchroute.registry import ModelSpec, Registry, get_registry, load_registry
    from batchroute.routing import Decision, RouteInput, RoutePolicy, decide, weights_for
    from batchroute.settings import Settings, get_settings
    from batchroute.simprovider import SimConfig, start_sim_server


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'batchroute' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = [
    "Analysis",
    "Analyzer",
    "AnalyzerError",
    "BatchrouteError",
    "BrokerError",
    "BudgetExceeded",
    "ConfigError",
    "Decision",
    "InputError",
    "JobOptions",
    "ModelSpec",
    "NotFoundError",
    "ProviderAuthError",
    "ProviderBadRequest",
    "ProviderError",
    "ProviderProtocolError",
    "ProviderRateLimited",
    "ProviderTimeout",
    "ProviderUnavailable",
    "Registry",
    "Retry",
    "RouteInput",
    "RoutePolicy",
    "RoutingError",
    "Settings",
    "SimConfig",
    "StorageError",
    "SubmitReport",
    "decide",
    "explain_request",
    "get_analyzer",
    "get_registry",
    "get_settings",
    "iter_results",
    "job_status",
    "load_registry",
    "migrate",
    "reconcile",
    "run_demo",
    "start_sim_server",
    "submit_job",
    "weights_for",
    "write_results",
]
