"""`alembic-operator run` next to a cluster (the documented way without Helm), on the bed: what its webhook
registration leaves behind. A clean stop removes the MutatingWebhookConfiguration the process wrote (it calls the
process's own URL, and its fail-closed approvals entry would otherwise refuse every DatabaseMigration create), and
only that one; a killed process leaves it, as the README says, until it is deleted by hand."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client as k8s

from alembic_operator import webhook
from bed.controlplane import Bed
from e2e import crd
from gating import GateOperator, remove_webhook_configuration

pytestmark = pytest.mark.bed
__all__ = ["crd"]  # the fixture


def _read(api: k8s.AdmissionregistrationV1Api, name: str) -> k8s.V1MutatingWebhookConfiguration | None:
    try:
        return api.read_mutating_webhook_configuration(name)
    except k8s.ApiException as err:
        if err.status == 404:
            return None
        raise


@pytest.fixture
def admission(kube_api: k8s.ApiClient, namespace: str) -> Iterator[k8s.AdmissionregistrationV1Api]:
    api = k8s.AdmissionregistrationV1Api(kube_api)
    yield api
    for name in (f"gate-{namespace}", f"chart-{namespace}"):
        remove_webhook_configuration(kube_api, name)


def test_a_clean_stop_removes_its_configuration_and_a_killed_one_leaves_it(
        bed: Bed, crd: Path, namespace: str, admission: k8s.AdmissionregistrationV1Api, tmp_path: Path) -> None:
    # A configuration of someone else's (as the chart's: another name, no registered-by annotation): never touched.
    chart = k8s.V1MutatingWebhookConfiguration(metadata=k8s.V1ObjectMeta(name=f"chart-{namespace}"), webhooks=[])
    admission.create_mutating_webhook_configuration(chart)

    operator = GateOperator(bed, namespace, tmp_path / "operator.log").start()
    written = _read(admission, operator.config_name)
    assert written is not None
    owner = written.metadata.annotations[webhook.REGISTERED_BY]
    assert owner.split("/")[1].isdigit(), owner  # host/pid/nonce of the process that wrote it
    assert written.webhooks[0].client_config.url.startswith(f"https://127.0.0.1:{operator.webhook_port}/")

    operator.stop()  # SIGTERM, as systemd, a terminal's Ctrl+C (SIGINT: the same path) or kubectl delete pod send
    assert operator.proc is not None and operator.proc.returncode == 0, operator.log()[-3000:]
    assert _read(admission, operator.config_name) is None, operator.log()[-3000:]
    assert f"removed MutatingWebhookConfiguration {operator.config_name}" in operator.log()
    assert _read(admission, chart.metadata.name) is not None

    killed = GateOperator(bed, namespace, tmp_path / "killed.log").start()
    killed.kill()
    left = _read(admission, killed.config_name)
    assert left is not None and left.metadata.annotations[webhook.REGISTERED_BY] != owner
    killed.stop()  # its relays
