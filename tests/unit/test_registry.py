import pytest

from batchroute.errors import ConfigError, NotFoundError
from batchroute.registry import load_registry, parse_registry
from batchroute.taxonomy import DOMAINS

GOOD_QUALITY = "{" + ", ".join(f"{d}: 0.5" for d in DOMAINS) + "}"


def test_bundled_registry_mirrors_seed_ensemble():
    reg = load_registry()
    assert [m.name for m in reg.models] == ["sim-gpt-4", "sim-claude-sonnet", "sim-mixtral-8x7b",
                                            "sim-gpt-3.5-turbo", "sim-llama-3-8b"]
    assert reg.provider_names() == ["openai-sim", "anthropic-sim", "together-sim"]
    assert reg.strongest().name == "sim-gpt-4"
    assert all(m.simulated and m.sim is not None for m in reg.models)
    assert reg.model("sim-claude-sonnet").api == "anthropic"


def test_every_bad_field_is_reported_with_its_path():
    text = f"""
models:
  - name: a
    provider: p
    api: foo
    context_window_tokens: -1
    input_price_per_mtok_usd: -2
    output_price_per_mtok_usd: 1
    rpm: 0
    tpm: 10
    quality: {{code: 2}}
  - name: b
    provider: p
    api: openai
    base_url: https://x/v1
    context_window_tokens: 10
    input_price_per_mtok_usd: 1
    output_price_per_mtok_usd: 1
    rpm: 1
    tpm: 1
    quality: {GOOD_QUALITY}
    colour: red
"""
    with pytest.raises(ConfigError) as ei:
        parse_registry(text, "r.yaml")
    problems = ei.value.problems
    assert any(p.startswith("models[0](a).api:") for p in problems)
    assert any(p.startswith("models[0](a).context_window_tokens:") for p in problems)
    assert any(p.startswith("models[0](a).input_price_per_mtok_usd:") for p in problems)
    assert any(p.startswith("models[0](a).rpm:") for p in problems)
    assert any(p.startswith("models[0](a).quality:") for p in problems)
    assert any(p.startswith("models[1](b).colour:") for p in problems)
    assert str(ei.value).startswith("r.yaml: 6 invalid field(s)")


def test_missing_price_and_duplicate_names():
    def base(price: str) -> str:
        return ("  - {name: m, provider: p, api: openai, base_url: 'https://x', context_window_tokens: 5, "
                + price + "rpm: 1, tpm: 1, quality: " + GOOD_QUALITY + "}\n")

    with pytest.raises(ConfigError, match="output_price_per_mtok_usd: Field required"):
        parse_registry("models:\n" + base("input_price_per_mtok_usd: 1, "))
    two = base("input_price_per_mtok_usd: 1, output_price_per_mtok_usd: 1, ")
    with pytest.raises(ConfigError, match="duplicate model name"):
        parse_registry("models:\n" + two + two)


def test_not_yaml_and_unknown_model():
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_registry("models: [", "x.yaml")
    with pytest.raises(NotFoundError, match="unknown model 'nope'"):
        load_registry().model("nope")


def test_prior_quality_complex_drop():
    m = load_registry().model("sim-llama-3-8b")
    assert m.prior_quality("code", "simple") == pytest.approx(0.78)
    assert m.prior_quality("code", "complex") == pytest.approx(0.78 * 0.60)
