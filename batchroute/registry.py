"""The model registry: which models exist, who serves them, what they cost and how good they are.

A YAML file validated by pydantic. :func:`load_registry` raises
:class:`~batchroute.errors.ConfigError` listing every bad field by its path
(``models[2].input_price_per_mtok_usd: ...``). The bundled file
(``batchroute/data/registry.yaml``) serves every model from the simulated provider.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from batchroute.errors import ConfigError, NotFoundError
from batchroute.taxonomy import DOMAINS

ApiKind = Literal["openai", "anthropic", "simulated"]
BUNDLED_REGISTRY = Path(__file__).parent / "data" / "registry.yaml"
SIM_PLACEHOLDER = "{sim}"


class SimProfile(BaseModel):
    """How the simulated provider behaves for a model: latency and output length."""

    model_config = ConfigDict(extra="forbid")

    base_latency_ms: float = Field(ge=0)
    per_output_token_ms: float = Field(ge=0)
    output_tokens_min: int = Field(default=16, ge=1)
    output_tokens_max: int = Field(default=600, ge=1)

    @model_validator(mode="after")
    def _range(self) -> SimProfile:
        if self.output_tokens_max < self.output_tokens_min:
            raise ValueError("output_tokens_max must be >= output_tokens_min")
        return self


class ProviderSpec(BaseModel):
    """Limits shared by every model of one provider (an account or an endpoint)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    rpm: int | None = Field(default=None, gt=0)
    tpm: int | None = Field(default=None, gt=0)


class ModelSpec(BaseModel):
    """One routable model. Prices are USD per million tokens; limits are per minute."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    provider: str = Field(min_length=1, pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    api: ApiKind
    # The model id sent on the wire; defaults to ``name``.
    wire_model: str | None = None
    # ``{sim}`` stands for the simulated provider's address (in-process or BATCHROUTE_SIM_URL).
    base_url: str = SIM_PLACEHOLDER
    api_key_env: str | None = None
    context_window_tokens: int = Field(gt=0)
    max_output_tokens: int = Field(default=4096, gt=0)
    input_price_per_mtok_usd: float = Field(ge=0)
    output_price_per_mtok_usd: float = Field(ge=0)
    cached_input_price_per_mtok_usd: float | None = Field(default=None, ge=0)
    rpm: int = Field(gt=0)
    tpm: int = Field(gt=0)
    # Prior quality in [0, 1] per TAXONOMY domain, on simple prompts.
    quality: dict[str, float]
    # Relative quality lost on complex prompts: prior(complex) = prior(simple) * (1 - drop).
    complex_quality_drop: float = Field(default=0.2, ge=0, le=1)
    sim: SimProfile | None = None

    @field_validator("quality")
    @classmethod
    def _quality(cls, v: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(v) - set(DOMAINS))
        missing = sorted(set(DOMAINS) - set(v))
        if unknown:
            raise ValueError(f"unknown domain(s) {unknown}; allowed: {list(DOMAINS)}")
        if missing:
            raise ValueError(f"missing domain(s) {missing}")
        bad = {k: q for k, q in v.items() if not 0.0 <= q <= 1.0}
        if bad:
            raise ValueError(f"quality must be within [0, 1]: {bad}")
        return v

    @model_validator(mode="after")
    def _sim_needs_profile(self) -> ModelSpec:
        if self.api == "simulated" and self.sim is None:
            raise ValueError("api 'simulated' needs a 'sim' latency profile")
        if SIM_PLACEHOLDER in self.base_url and self.sim is None:
            raise ValueError("a model served by {sim} needs a 'sim' latency profile")
        return self

    @property
    def wire_name(self) -> str:
        """The model id sent to the provider."""
        return self.wire_model or self.name

    @property
    def simulated(self) -> bool:
        """True when the simulated provider serves this model."""
        return SIM_PLACEHOLDER in self.base_url

    def prior_quality(self, domain: str, complexity: str) -> float:
        """Static prior quality of this model for a domain and complexity."""
        q = self.quality.get(domain, 0.5)
        return q * (1.0 - self.complex_quality_drop) if complexity == "complex" else q

    def resolved_base_url(self, sim_url: str) -> str:
        """The base URL with ``{sim}`` replaced by the simulated provider's address."""
        return self.base_url.replace(SIM_PLACEHOLDER, sim_url.rstrip("/"))


class Registry(BaseModel):
    """The validated registry: providers and models, looked up by name."""

    model_config = ConfigDict(extra="forbid")

    providers: list[ProviderSpec] = Field(default_factory=list)
    models: list[ModelSpec] = Field(min_length=1)
    # Counterfactual baseline for savings; defaults to the model with the best mean prior quality.
    baseline_model: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Registry:
        names = [m.name for m in self.models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate model name(s): {dupes}")
        pnames = [p.name for p in self.providers]
        if len(set(pnames)) != len(pnames):
            raise ValueError("duplicate provider names")
        if self.baseline_model is not None and self.baseline_model not in names:
            raise ValueError(f"baseline_model {self.baseline_model!r} is not a model in this registry")
        return self

    def __iter__(self) -> Iterator[ModelSpec]:  # type: ignore[override]
        return iter(self.models)

    def model(self, name: str) -> ModelSpec:
        """The model called ``name``; raises NotFoundError listing the known names."""
        for m in self.models:
            if m.name == name:
                return m
        raise NotFoundError(f"unknown model {name!r}; known: {[m.name for m in self.models]}")

    def provider_names(self) -> list[str]:
        """Every provider that serves at least one model, in registry order."""
        seen: dict[str, None] = {}
        for m in self.models:
            seen.setdefault(m.provider, None)
        return list(seen)

    def provider(self, name: str) -> ProviderSpec:
        """Provider-wide limits for ``name`` (an unlimited spec when the file names none)."""
        for p in self.providers:
            if p.name == name:
                return p
        return ProviderSpec(name=name)

    def strongest(self) -> ModelSpec:
        """The baseline model: ``baseline_model`` or the best mean prior quality."""
        if self.baseline_model:
            return self.model(self.baseline_model)
        return max(self.models, key=lambda m: sum(m.quality.values()))


def _format_loc(loc: tuple[int | str, ...], data: object) -> str:
    out = ""
    node = data
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            item = node[part] if isinstance(node, list) and part < len(node) else None
            name = item.get("name") if isinstance(item, dict) else None
            if name:
                out += f"({name})"
            node = node[part] if isinstance(node, list) and part < len(node) else None
        else:
            out += ("." if out else "") + str(part)
            node = node.get(part) if isinstance(node, dict) else None
    return out


def parse_registry(text: str, source: str = "<registry>") -> Registry:
    """Validate registry YAML text; raises ConfigError listing every bad field by path."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping with 'models' (and optional 'providers')")
    try:
        return Registry.model_validate(data)
    except ValidationError as exc:
        problems = [f"{_format_loc(e['loc'], data) or '<root>'}: {e['msg']}" for e in exc.errors()]
        raise ConfigError(f"{source}: {len(problems)} invalid field(s)", problems) from exc


def load_registry(path: Path | str | None = None) -> Registry:
    """Load and validate a registry file (the bundled one when ``path`` is None)."""
    p = Path(path) if path else BUNDLED_REGISTRY
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read registry {p}: {exc.strerror}") from exc
    return parse_registry(text, str(p))


@functools.lru_cache(maxsize=4)
def _cached(path: str) -> Registry:
    return load_registry(path or None)


def get_registry() -> Registry:
    """The registry named by settings (``BATCHROUTE_REGISTRY``), loaded once per process."""
    from batchroute.settings import get_settings

    return _cached(str(get_settings().registry or ""))
