"""The operator's start-up: its configuration from the command line and the environment (as the chart sets them),
and the Kopf handlers it registers (on its own registry, nothing by import)."""

from __future__ import annotations

import argparse
from typing import Any

import kopf
import pytest

from alembic_operator import app, config, metrics
from alembic_operator.config import OperatorConfig


def parse(argv: list[str], env: dict[str, str] | None = None) -> OperatorConfig:
    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    return OperatorConfig.from_args(parser.parse_args(argv), env or {})


def ids(registry: kopf.OperatorRegistry) -> set[str]:
    registries: list[Any] = [registry._spawning, registry._watching, registry._changing, registry._webhooks]
    return {str(h.id) for r in registries for h in r.get_all_handlers()}


def test_configuration_from_the_flags_and_the_environment_the_chart_sets() -> None:
    cfg = parse(["--liveness=http://0.0.0.0:8080/healthz", "--peering=ops", "--priority=2", "--namespace=a,b",
                 "--namespace=c", "--verbose", "--webhook-service", "ops/hook"],
                {config.IMAGE_ENV: "registry.example/op@sha256:00", metrics.PORT_ENV: "9090"})
    assert cfg.namespaces == ("a", "b", "c") and cfg.watched == ["a", "b", "c"]
    assert (cfg.peering, cfg.priority, cfg.standalone, cfg.verbose) == ("ops", 2, False, True)
    assert cfg.operator_image == "registry.example/op@sha256:00"
    assert cfg.metrics == metrics.MetricsOptions(9090, "0.0.0.0")
    assert cfg.webhook.namespaces == ("a", "b", "c") and cfg.webhook.service == "ops/hook" and cfg.webhook.enabled
    assert cfg.reconciler
    bare = parse(["--standalone"])
    assert bare.watched is None and bare.metrics is None and bare.operator_image == config.DEFAULT_IMAGE


def test_every_handler_is_registered_on_the_operators_registry() -> None:
    registry, _operator = app.registry(parse([]))
    # No daemon and no timer per resource: the reconciles run on one scheduler (handlers.start), fed by the watches.
    assert ids(registry) == {"job_changed", "migration_changed", "set_changed", "on_delete", "gate-migration",
                             "gate-set", "hold-until-schema-ready", "govern-approvals", "govern-set-approvals"}
    activities = [str(h.activity.value) for h in registry._activities.get_all_handlers()]
    assert sorted(activities) == ["authentication", "cleanup", "startup"]  # one start-up
    assert not kopf.get_default_registry()._webhooks.get_all_handlers()  # nothing registered by import


def test_gating_only_and_without_the_webhook() -> None:
    gating, _ = app.registry(parse(["--no-reconciler"]))
    assert ids(gating) == {"gate-migration", "gate-set", "hold-until-schema-ready", "govern-approvals",
                           "govern-set-approvals"}
    no_webhook, _ = app.registry(parse(["--no-webhook"]))
    assert "hold-until-schema-ready" not in ids(no_webhook) and "on_delete" in ids(no_webhook)
    assert "govern-approvals" not in ids(no_webhook) and "govern-set-approvals" not in ids(no_webhook)


def test_the_peering_lifetime_is_kopfs_setting_from_the_first_keep_alive() -> None:
    """The chart's --peering-lifetime reaches Kopf's settings before Kopf starts (its keep-alives carry it); without
    the flag Kopf keeps its own default."""
    cfg = parse(["--peering=ops", "--priority=1", "--peering-lifetime=20"])
    assert cfg.peering_lifetime == 20 and app.settings(cfg).peering.lifetime == 20
    assert app.settings(parse(["--peering=ops"])).peering.lifetime == kopf.OperatorSettings().peering.lifetime == 60
    with pytest.raises(SystemExit):  # Kopf writes keep-alives 5-10 s before the end: 10 s or less could expire
        parse(["--peering=ops", "--peering-lifetime=10"])
