"""compose.yaml cannot run here (no Docker engine); check what can be checked: its shape, and that
every command it runs exists in the project."""

from pathlib import Path

import yaml
from typer.testing import CliRunner

from batchroute.cli import app
from batchroute.registry import load_registry

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())


def test_services_cover_the_deployment():
    services = COMPOSE["services"]
    providers = load_registry().provider_names()
    expected = {"redis", "postgres", "migrate", "sim-provider", "api", "worker-analyze", "beat",
                *(f"worker-{p}" for p in providers)}
    assert expected <= set(services)
    for p in providers:
        cmd = services[f"worker-{p}"]["command"]
        assert cmd[:5] == ["batchroute", "worker", "provider", "--provider", p]
    assert services["migrate"]["command"] == ["batchroute", "migrate"]
    assert services["worker-analyze"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_every_batchroute_command_exists():
    runner = CliRunner()
    checked = 0
    for name, svc in COMPOSE["services"].items():
        cmd = svc.get("command")
        if not cmd or cmd[0] != "batchroute":
            continue
        # `--help` after the full argument list proves typer knows every subcommand and option name.
        args = [a for a in cmd[1:]]
        result = runner.invoke(app, [*args, "--help"])
        assert result.exit_code == 0, f"{name}: {' '.join(cmd)}\n{result.output}"
        checked += 1
    assert checked >= 8


def test_compose_env_names_are_settings():
    from batchroute.settings import Settings

    fields = {f"BATCHROUTE_{n.upper()}" for n in Settings.model_fields}
    env = COMPOSE["x-batchroute"]["environment"]
    assert {k for k in env if k.startswith("BATCHROUTE_")} <= fields
