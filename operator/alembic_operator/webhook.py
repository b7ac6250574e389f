"""The mutating admission webhook that holds new labelled pods: Kopf's admission server, our own configuration.

Kopf serves the webhook (``kopf.WebhookServer``, TLS); the handler adds the scheduling gate to a labelled pod at
creation when its requirement is not met yet (:func:`gate.admit`). The ``MutatingWebhookConfiguration`` is written
here rather than by Kopf (``settings.admission.managed``): Kopf 1.45 builds it without a ``namespaceSelector`` (the
operator's own namespace must be excluded), with ``timeoutSeconds: 30`` and with ``url`` client configs only (in a
cluster the API server reaches the operator through a Service reference). Ours:

- matches only pods that carry the ``wait-for`` label (``objectSelector``), on CREATE only;
- excludes the operator's own namespace (and, when the operator watches some namespaces only, every other one);
- ``failurePolicy: Fail``: with the operator down, labelled pods are refused, never let through ungated (fail
  closed); unlabelled pods never reach the webhook.

What stays when the operator stops: a configuration that calls a Service (``--webhook-service``, in a cluster) stays,
on purpose (fail closed until a replica serves it again). One that calls this process's own URL (``alembic-operator
run`` next to a cluster) is removed on a clean stop (SIGTERM, SIGINT: Kopf exits the server's context, see
:meth:`GateWebhookServer.__aexit__`), as Kopf removes the webhooks it manages; a killed process (SIGKILL) leaves it,
and the API server then refuses labelled pods and approvals until it is deleted. It is removed only while its
``registered-by`` annotation still names this process: a configuration another process rewrote since is not ours.

``--webhook-config-name none`` leaves the configuration to someone else (a chart using cert-manager's CA injector):
the operator then only serves the webhook.

Certificates: ``--webhook-cert-dir`` holding ``tls.crt``/``tls.key`` (and ``ca.crt``), e.g. a cert-manager Secret;
otherwise a CA and a serving certificate are generated at start-up with ``cryptography`` (kopf[dev]'s generator does
not work with OpenSSL 3) and the CA goes into the configuration's ``caBundle``.

The Kopf registration (``@kopf.on.mutate``) and the start-up are in :mod:`.app`; the Kubernetes calls are
:mod:`.kube`'s.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import ipaddress
import logging
import os
import secrets
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import kopf
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from kubernetes import client as k8s
from pydantic import JsonValue

from . import approvals, gate, reasons
from . import constants as c
from .jobparts import manifest
from .kube import Client, KubeError
from .release import Gatekeeper

log = logging.getLogger("alembic_operator.webhook")

HANDLER_ID = "hold-until-schema-ready"
APPROVAL_HANDLER_ID = "govern-approvals"
SET_APPROVAL_HANDLER_ID = "govern-set-approvals"
CONFIG_NAME = f"alembic-operator.{c.GROUP}"
WEBHOOK_NAME = f"schema-gate.{c.GROUP}"
APPROVALS_WEBHOOK_NAME = f"approvals.{c.GROUP}"  # requests that approve: fails closed
IDENTITY_WEBHOOK_NAME = f"identity.{c.GROUP}"  # every other change of a DatabaseMigration: fails open
SET_APPROVALS_WEBHOOK_NAME = f"set-approvals.{c.GROUP}"  # the same two for DatabaseMigrationSets
SET_IDENTITY_WEBHOOK_NAME = f"set-identity.{c.GROUP}"
REGISTERED_BY = f"{c.GROUP}/registered-by"  # the process that wrote the configuration: only it removes it
UNREGISTER_SECONDS = 10.0  # a stop waits this long at most for the API server to remove the configuration
NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
ENV_PREFIX = "ALEMBIC_OPERATOR_WEBHOOK_"


@dataclass(frozen=True)
class WebhookOptions:
    """Where the webhook listens, how the API server reaches it, and what its configuration matches."""

    enabled: bool = True
    listen: str = "0.0.0.0"  # address to listen on
    port: int = 9443
    host: str | None = None  # host in the webhook URL (default: the listen address, 127.0.0.1 for 0.0.0.0)
    service: str | None = None  # NAMESPACE/NAME[:PORT]: reach the webhook through this Service instead of a URL
    cert_dir: str | None = None  # tls.crt, tls.key (and ca.crt); None: generate
    config_name: str = CONFIG_NAME
    namespaces: tuple[str, ...] = ()  # only these namespaces (the operator watches only them); empty: all
    exclude_namespaces: tuple[str, ...] = field(default_factory=tuple)  # default: the operator's own
    timeout_seconds: int = 10
    require_different_approver: bool = False  # the four-eyes rule for every resource (chart-wide)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> WebhookOptions:
        """Read ALEMBIC_OPERATOR_WEBHOOK_{ENABLED,LISTEN,PORT,HOST,SERVICE,CERT_DIR,CONFIG_NAME,NAMESPACES,
        EXCLUDE_NAMESPACES,TIMEOUT_SECONDS}; what is not set keeps its default."""
        env = dict(os.environ if environ is None else environ)

        def get(name: str) -> str | None:
            value = env.get(ENV_PREFIX + name)
            return value if value not in (None, "") else None

        def split(name: str) -> tuple[str, ...]:
            return tuple(x.strip() for x in (get(name) or "").split(",") if x.strip())

        opts = cls()
        if (v := get("ENABLED")) is not None:
            opts = replace(opts, enabled=v.lower() not in ("0", "false", "no", "off"))
        if (v := get("LISTEN")) is not None:
            opts = replace(opts, listen=v)
        if (v := get("PORT")) is not None:
            opts = replace(opts, port=int(v))
        if (v := get("TIMEOUT_SECONDS")) is not None:
            opts = replace(opts, timeout_seconds=int(v))
        if (v := get("REQUIRE_DIFFERENT_APPROVER")) is not None:
            opts = replace(opts, require_different_approver=v.lower() in ("1", "true", "yes", "on"))
        config_name = env.get(ENV_PREFIX + "CONFIG_NAME")
        return replace(opts, host=get("HOST"), service=get("SERVICE"), cert_dir=get("CERT_DIR"),
                       config_name=CONFIG_NAME if config_name is None else config_name, namespaces=split("NAMESPACES"),
                       exclude_namespaces=split("EXCLUDE_NAMESPACES"))

    def managed(self) -> bool:
        """Does the operator write the MutatingWebhookConfiguration? No when its name is "" or "none" (the chart
        ships it, e.g. with cert-manager's CA injection)."""
        return self.config_name.strip().lower() not in ("", "none")

    def excluded(self) -> tuple[str, ...]:
        """Namespaces the webhook never sees: those given, else the operator's own (when it runs in a cluster)."""
        if self.exclude_namespaces:
            return self.exclude_namespaces
        own = os.environ.get("POD_NAMESPACE") or (
            NAMESPACE_FILE.read_text().strip() if NAMESPACE_FILE.is_file() else "")
        return (own,) if own else ()

    def url_host(self) -> str:
        if self.host:
            return self.host
        addr = ipaddress.ip_address(self.listen) if _is_ip(self.listen) else None
        return "127.0.0.1" if addr is not None and addr.is_unspecified else self.listen

    def service_ref(self) -> k8s.AdmissionregistrationV1ServiceReference | None:
        if not self.service:
            return None
        ref, _, port = self.service.partition(":")
        namespace, _, name = ref.rpartition("/")
        if not namespace or not name:
            raise ValueError(f"--webhook-service must be NAMESPACE/NAME[:PORT], not {self.service!r}")
        return k8s.AdmissionregistrationV1ServiceReference(namespace=namespace, name=name, port=int(port or 443))

    def hostnames(self) -> list[str]:
        """Names and addresses the generated serving certificate is valid for."""
        names = [self.url_host(), "localhost", "127.0.0.1"]
        if svc := self.service_ref():
            base = f"{svc.name}.{svc.namespace}"
            names += [f"{base}.svc", f"{base}.svc.cluster.local", base]
        if not _is_ip(self.listen) or not ipaddress.ip_address(self.listen).is_unspecified:
            names.append(self.listen)
        return list(dict.fromkeys(names))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``run`` flags of the webhook; their defaults come from ALEMBIC_OPERATOR_WEBHOOK_* (the chart sets them)."""
    d = WebhookOptions.from_env()
    g = parser.add_argument_group("pod gating webhook")
    g.add_argument("--no-webhook", dest="webhook", action="store_false", default=d.enabled,
                   help="do not serve the admission webhook (held pods are still released)")
    g.add_argument("--webhook-listen", default=d.listen, help="address to listen on (default %(default)s)")
    g.add_argument("--webhook-port", type=int, default=d.port, help="port to listen on (default %(default)s)")
    g.add_argument("--webhook-host", default=d.host,
                   help="host the API server calls: the webhook URL is https://HOST:PORT (default: listen address)")
    g.add_argument("--webhook-service", default=d.service, metavar="NAMESPACE/NAME[:PORT]",
                   help="call the webhook through this Service instead of a URL (in a cluster)")
    g.add_argument("--webhook-cert-dir", default=d.cert_dir,
                   help="directory with tls.crt, tls.key and ca.crt (default: generate a CA and a certificate)")
    g.add_argument("--webhook-config-name", default=d.config_name,
                   help="name of the MutatingWebhookConfiguration the operator writes; 'none': it is managed "
                        "elsewhere (default %(default)s)")
    g.add_argument("--webhook-exclude-namespace", action="append", default=list(d.exclude_namespaces),
                   help="namespaces whose pods are never held (default: the operator's own)")
    g.add_argument("--require-different-approver", action="store_true", default=d.require_different_approver,
                   help="the approver of a plan must not be the user who last changed the spec, for every "
                        "DatabaseMigration (spec.approval.requireDifferentUser turns it on for one)")


def options_from_args(args: argparse.Namespace, namespaces: Sequence[str] = ()) -> WebhookOptions:
    return WebhookOptions(
        enabled=bool(args.webhook), listen=args.webhook_listen, port=args.webhook_port, host=args.webhook_host,
        service=args.webhook_service, cert_dir=args.webhook_cert_dir, config_name=args.webhook_config_name,
        namespaces=tuple(namespaces),
        exclude_namespaces=tuple(ns for item in args.webhook_exclude_namespace for ns in item.split(",") if ns),
        require_different_approver=bool(getattr(args, "require_different_approver", False)),
    )


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


# --- certificates -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CertFiles:
    cert: Path
    key: Path
    ca: Path


def make_certificates(directory: Path, hostnames: Sequence[str], days: int = 365) -> CertFiles:
    """A self-signed CA and a serving certificate for ``hostnames`` (DNS names and IP addresses), as PEM files."""
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "alembic-operator webhook CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for name in dict.fromkeys(hostnames):
        sans.append(x509.IPAddress(ipaddress.ip_address(name)) if _is_ip(name) else x509.DNSName(name))
    common = next((h for h in hostnames if not _is_ip(h)), hostnames[0] if hostnames else "alembic-operator")
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    files = CertFiles(directory / "tls.crt", directory / "tls.key", directory / "ca.crt")
    files.key.touch(mode=0o600)
    files.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return files


def cert_files(opts: WebhookOptions) -> tuple[CertFiles, Path | None]:
    """The serving certificate's files, and the temporary directory this process generated them in (None: they are
    --webhook-cert-dir's, which belong to whoever mounted them)."""
    if opts.cert_dir:
        base = Path(opts.cert_dir)
        ca = base / "ca.crt"
        return CertFiles(base / "tls.crt", base / "tls.key", ca if ca.is_file() else base / "tls.crt"), None
    made = Path(tempfile.mkdtemp(prefix="alembic-operator-webhook-"))
    return make_certificates(made, opts.hostnames()), made


# --- the configuration --------------------------------------------------------------------------------------------


def namespace_selector(opts: WebhookOptions) -> k8s.V1LabelSelector | None:
    exprs: list[k8s.V1LabelSelectorRequirement] = []
    if opts.namespaces:
        exprs.append(k8s.V1LabelSelectorRequirement(key="kubernetes.io/metadata.name", operator="In",
                                                    values=sorted(opts.namespaces)))
    if excluded := opts.excluded():
        exprs.append(k8s.V1LabelSelectorRequirement(key="kubernetes.io/metadata.name", operator="NotIn",
                                                    values=sorted(excluded)))
    return k8s.V1LabelSelector(match_expressions=exprs) if exprs else None


def _client_config(opts: WebhookOptions, client_config: kopf.WebhookClientConfig,
                   handler: str) -> k8s.AdmissionregistrationV1WebhookClientConfig:
    """How the API server calls `handler`: through the Service, or at the URL Kopf's server yields."""
    if (svc := opts.service_ref()) is not None:
        return k8s.AdmissionregistrationV1WebhookClientConfig(
            ca_bundle=client_config.get("caBundle") or None, service=svc.model_copy(update={"path": f"/{handler}"}))
    return k8s.AdmissionregistrationV1WebhookClientConfig(
        ca_bundle=client_config.get("caBundle") or None, url=f"{str(client_config.get('url')).rstrip('/')}/{handler}")


def webhook_configuration(opts: WebhookOptions, client_config: kopf.WebhookClientConfig,
                          registered_by: str | None = None) -> dict[str, JsonValue]:
    """The MutatingWebhookConfiguration for a client config yielded by Kopf's server (``url``, ``caBundle``), written
    by the process ``registered_by`` names; as the JSON the API server receives."""
    pods = k8s.V1MutatingWebhook(
        name=WEBHOOK_NAME,
        client_config=_client_config(opts, client_config, HANDLER_ID),
        rules=[k8s.V1RuleWithOperations(api_groups=[""], api_versions=["v1"], resources=["pods"],
                                        operations=["CREATE"], scope="Namespaced")],
        object_selector=k8s.V1LabelSelector(match_expressions=[
            k8s.V1LabelSelectorRequirement(key=c.WAIT_FOR_LABEL, operator="Exists")]),
        namespace_selector=namespace_selector(opts),
        failure_policy="Fail", match_policy="Equivalent", side_effects="None", timeout_seconds=opts.timeout_seconds,
        admission_review_versions=["v1"], reinvocation_policy="Never",
    )
    return manifest(k8s.V1MutatingWebhookConfiguration(
        api_version="admissionregistration.k8s.io/v1", kind="MutatingWebhookConfiguration",
        metadata=k8s.V1ObjectMeta(name=opts.config_name, labels={c.MANAGED_BY_LABEL: c.MANAGED_BY},
                                  annotations={REGISTERED_BY: registered_by} if registered_by else None),
        webhooks=[pods, *_approval_webhooks(opts, client_config)],
    ))


def _approval_webhooks(opts: WebhookOptions, client_config: kopf.WebhookClientConfig) -> list[k8s.V1MutatingWebhook]:
    def entry(name: str, failure_policy: str, condition: k8s.V1MatchCondition, handler: str = APPROVAL_HANDLER_ID,
              plural: str = c.PLURAL) -> k8s.V1MutatingWebhook:
        return k8s.V1MutatingWebhook(
            name=name, client_config=_client_config(opts, client_config, handler),
            rules=[k8s.V1RuleWithOperations(api_groups=[c.GROUP], api_versions=[c.VERSION], resources=[plural],
                                            operations=["CREATE", "UPDATE"], scope="Namespaced")],
            match_policy="Equivalent", side_effects="None", timeout_seconds=opts.timeout_seconds,
            admission_review_versions=["v1"], reinvocation_policy="Never", namespace_selector=namespace_selector(opts),
            failure_policy=failure_policy, match_conditions=[condition])

    return [
        entry(APPROVALS_WEBHOOK_NAME, "Fail", k8s.V1MatchCondition(name="approves",
                                                                   expression=approvals.APPROVAL_CHANGE)),
        entry(IDENTITY_WEBHOOK_NAME, "Ignore", k8s.V1MatchCondition(name="does-not-approve",
                                                                    expression=f"!({approvals.APPROVAL_CHANGE})")),
        # A set's approval counts for its members (fleet.approval): governed the same way, by its own handler.
        entry(SET_APPROVALS_WEBHOOK_NAME, "Fail", k8s.V1MatchCondition(
            name="approves", expression=approvals.SET_APPROVAL_CHANGE), SET_APPROVAL_HANDLER_ID, c.SET_PLURAL),
        entry(SET_IDENTITY_WEBHOOK_NAME, "Ignore", k8s.V1MatchCondition(
            name="does-not-approve", expression=f"!({approvals.SET_APPROVAL_CHANGE})"), SET_APPROVAL_HANDLER_ID,
            c.SET_PLURAL),
    ]


def approval_webhooks(opts: WebhookOptions, client_config: kopf.WebhookClientConfig) -> list[dict[str, JsonValue]]:
    """The two entries for DatabaseMigrations (see approvals), and the same two for DatabaseMigrationSets: one
    handler each, split by the API server with matchConditions so that only a request that approves fails closed
    (the chart writes the same ones)."""
    return [manifest(hook) for hook in _approval_webhooks(opts, client_config)]


class GateWebhookServer:
    """Kopf's HTTPS webhook server, plus writing our MutatingWebhookConfiguration whenever its client config changes
    (at start-up, and when the certificate files change), and removing it on a clean stop (see the module's
    docstring). Kopf enters and exits it as an async context manager, around the whole life of the server."""

    def __init__(self, opts: WebhookOptions, client: Client) -> None:
        self.opts = opts
        self.client = client
        self.identity = f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(4)}"  # this process, this start
        self.registered = False
        files, self.generated = cert_files(opts)
        self.server = kopf.WebhookServer(addr=opts.listen, port=opts.port, host=opts.url_host(),
                                         certfile=str(files.cert), pkeyfile=str(files.key), cafile=str(files.ca))

    async def __aenter__(self) -> GateWebhookServer:
        await self.server.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self.unregister()
        finally:
            self.forget_generated_certificate()
            await self.server.__aexit__(*exc)

    def forget_generated_certificate(self) -> None:
        """Delete the generated key and certificates when the server stops: a private key left in /tmp by every
        start would outlive the process. Not sooner: Kopf's server re-reads the files every few seconds, to restart
        with renewed ones, and fails when they are gone. A killed process leaves the directory (mode 0700)."""
        if self.generated is not None:
            shutil.rmtree(self.generated, ignore_errors=True)
            self.generated = None

    async def __call__(self, fn: kopf.WebhookFn) -> AsyncIterator[kopf.WebhookClientConfig]:
        async for client_config in self.server(fn):
            body = webhook_configuration(self.opts, client_config, self.identity)
            target = _client_config(self.opts, client_config, HANDLER_ID).url or f"the Service {self.opts.service}"
            if self.opts.managed():
                await self.client.apply_webhook_configuration(body)
                self.registered = True
                log.info("MutatingWebhookConfiguration %s points at %s", self.opts.config_name, target)
            else:
                # Kopf's client URL would name 127.0.0.1 for a 0.0.0.0 listener: say where it really listens.
                log.info("serving the webhook on %s:%d (HTTPS); its configuration is managed elsewhere",
                         self.opts.listen, self.opts.port)
            yield client_config

    async def unregister(self) -> None:
        """Remove the configuration this process wrote, when it calls this process's own URL and still names it."""
        name = self.opts.config_name
        if not self.registered:
            return
        if self.opts.service_ref() is not None:
            log.info("MutatingWebhookConfiguration %s stays: it calls a Service, which another replica may serve",
                     name)
            return
        try:
            async with asyncio.timeout(UNREGISTER_SECONDS):
                removed = await self.client.remove_webhook_configuration(name, REGISTERED_BY, self.identity)
        except (KubeError, TimeoutError) as err:
            log.warning("could not remove MutatingWebhookConfiguration %s (%s): labelled pods and approvals are "
                        "refused until it is deleted: kubectl delete mutatingwebhookconfiguration %s", name,
                        err or "timed out", name)
            return
        self.registered = False
        if removed:
            log.info("removed MutatingWebhookConfiguration %s (it called this process)", name)
        else:
            log.info("MutatingWebhookConfiguration %s stays: another process has written it since", name)


async def hold_until_schema_ready(keeper: Gatekeeper, opts: WebhookOptions, body: kopf.Body, patch: kopf.Patch,
                                  warnings: list[str], logger: logging.Logger | logging.LoggerAdapter[Any]) -> None:
    """The admission of a labelled pod at creation: add the scheduling gate while its requirement is not met."""
    pod = dict(body)
    meta = dict(pod.get("metadata") or {})
    requirement = gate.requirement_of(meta)
    if requirement is None:
        return
    key = (str(meta.get("namespace") or ""), requirement.migration)
    excluded = opts.excluded()
    try:
        # A fresh read, not the watch's copy: a DatabaseMigration and a Deployment applied together must not let
        # a new pod through on the resource's previous Ready (a set: it and its DatabaseMigrations).
        view = await keeper.read_set(*key) if requirement.kind == c.SET_KIND else None
        dbm = await keeper.read_migration(*key) if view is None else None
    except Exception as err:  # fail closed: hold; the release loop frees the pod if its requirement is met
        logger.warning("could not read %s %s/%s, holding the pod: %s", requirement.kind, *key, err)
        decision = gate.Admission(hold=not gate.has_gate(pod) and not (pod.get("spec") or {}).get("nodeName"),
                                  verdict=gate.Verdict(False, reasons.MIGRATION_UNREADABLE,
                                                       f"could not read it: {err}"))
    else:
        decision = gate.admit(pod, dbm, excluded, view)
    if decision.warning:
        warnings.append(decision.warning)
    if decision.hold and decision.verdict is not None:
        patch.spec["schedulingGates"] = gate.with_gate(pod)
        warnings.append(f"pod held by scheduling gate {c.SCHEDULING_GATE}: {decision.verdict.message}")


async def govern_approvals(governed: approvals.Governed, client: Client, opts: WebhookOptions, body: kopf.Body,
                           old: kopf.Body | None, userinfo: Mapping[str, object], patch: kopf.Patch,
                           logger: logging.Logger | logging.LoggerAdapter[Any], operator: str | None = None) -> None:
    """The admission of a change of a DatabaseMigration or a DatabaseMigrationSet (`governed` says which): an
    approval only from a user who may `approve` that resource (and, with the four-eyes rule, not from the user who
    changed the spec); the identity record always true (a set's members count its approval: fleet.approval). The
    operator (its identity: `operator`) applying a set's template to a member approves nothing new: the template's
    approval settings were governed when the set was admitted."""
    new, before = dict(body), (dict(old) if old is not None else None)
    meta = dict(new.get("metadata") or {})
    namespace, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
    user = approvals.User.from_userinfo(userinfo)
    if (what := governed.approves(before, new)) and (owner := governed.admitted_with_set(before, new, user, operator)):
        logger.info("%s carries the approval settings of DatabaseMigrationSet %s's template (%s), admitted with the "
                    "set", name, owner, "; ".join(what))
    elif what:
        allowed, why = await client.may(user.username, user.uid, list(user.groups), user.extra, approvals.VERB,
                                        namespace, name, governed.plural)
        if not allowed:
            logger.warning("refused an approval of %s/%s by %s: %s", governed.plural, name, user.username,
                           why or "no RBAC rule allows it")
            raise kopf.AdmissionError(governed.refusal(user, namespace, name, what), code=403)
        if problem := governed.four_eyes(before, new, user, opts.require_different_approver):
            raise kopf.AdmissionError(problem, code=403)
        logger.info("%s approved %s", user.username, governed.approved(name, what))
    for key, value in governed.identity_patch(before, new, user).items():
        patch.metadata.setdefault("annotations", {})[key] = value
