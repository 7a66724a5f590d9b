"""The Kafka ACLs the bridge needs, and the one line that names a missing one.

`BRIDGE_ACLS` is the list docs/operations.md shows ("ACLs the bridge needs") and the
security tests grant (tests/integration/test_kafka_security.py checks the table against it
and grants what the table says). Names are templates: `{topic_prefix}` is
`kafka.topic_prefix`, `{app_id}` is `app_id`.

Kafka implies Describe by Read, Write (and Delete, Alter), so it is not listed. No cluster
ACL is needed: a transactional producer's idempotence is covered by its transactional id's
Write (Kafka 2.8 and later need no IdempotentWrite for it).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError as LibKafkaError

DOCS = "docs/operations.md#security"

DENIED_RESOURCE: dict[int, str] = {
    LibKafkaError.TOPIC_AUTHORIZATION_FAILED: "TOPIC",
    LibKafkaError.GROUP_AUTHORIZATION_FAILED: "GROUP",
    LibKafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED: "TRANSACTIONAL_ID",
    LibKafkaError.CLUSTER_AUTHORIZATION_FAILED: "CLUSTER",
}
"""Kafka's authorization errors, and the kind of resource each one is about."""


@dataclass(frozen=True, slots=True)
class AclGrant:
    """One ACL: allow `operation` on the `resource` named `name` (`pattern` LITERAL or
    PREFIXED), in the spelling of Kafka's enums (confluent-kafka `ResourceType` etc.)."""

    resource: str
    pattern: str
    name: str
    operation: str

    def named(self, app_id: str, topic_prefix: str) -> AclGrant:
        """This grant for one deployment (its templates filled in). Kafka has no empty
        prefix: without a `topic_prefix`, a prefixed topic grant becomes every topic
        (LITERAL `*`)."""
        name = self.name.format(app_id=app_id, topic_prefix=topic_prefix)
        if self.pattern == "PREFIXED" and not name:
            return AclGrant(self.resource, "LITERAL", "*", self.operation)
        return AclGrant(self.resource, self.pattern, name, self.operation)

    def kafka_acls(self, principal: str) -> str:
        """The `kafka-acls.sh` options that grant it to `principal`."""
        option = {
            "TOPIC": "--topic",
            "GROUP": "--group",
            "TRANSACTIONAL_ID": "--transactional-id",
        }[self.resource]
        return (
            f"--add --allow-principal {principal} --operation {_camel(self.operation)} "
            f"{option} '{self.name}' --resource-pattern-type {self.pattern.lower()}"
        )


def _camel(operation: str) -> str:
    """kafka-acls.sh's spelling of an operation: DESCRIBE_CONFIGS -> DescribeConfigs."""
    return "".join(word.title() for word in operation.split("_"))


BRIDGE_ACLS: tuple[tuple[AclGrant, str], ...] = (
    (
        AclGrant("TOPIC", "PREFIXED", "{topic_prefix}", "CREATE"),
        "create missing topics at start (not needed when every topic exists)",
    ),
    (
        AclGrant("TOPIC", "PREFIXED", "{topic_prefix}", "DESCRIBE_CONFIGS"),
        "check that the state topic is compacted",
    ),
    (
        AclGrant("TOPIC", "PREFIXED", "{topic_prefix}", "WRITE"),
        "write records, dead letters, gaps and positions (state topic) in transactions",
    ),
    (
        AclGrant("TOPIC", "PREFIXED", "{topic_prefix}", "READ"),
        "read back positions (state topic) and recent records (repeats); the stream group's topic",
    ),
    (
        AclGrant("TRANSACTIONAL_ID", "PREFIXED", "{app_id}.", "WRITE"),
        "a transactional producer per stream, `<app_id>.<stream id>`, and per backfill, "
        "`<app_id>.<stream id>.backfill`",
    ),
    (
        AclGrant("GROUP", "LITERAL", "{app_id}", "READ"),
        "the stream group the instances share the streams through",
    ),
)
"""(grant, what it is for): every ACL the bridge needs, nothing more."""


def bridge_acls(app_id: str, topic_prefix: str) -> list[AclGrant]:
    """`BRIDGE_ACLS` for one deployment."""
    return [grant.named(app_id, topic_prefix) for grant, _ in BRIDGE_ACLS]


def principal_of(config: Mapping[str, Any]) -> str:
    """The bridge's Kafka principal as far as its librdkafka settings tell: `User:<name>`
    for SASL/SCRAM or PLAIN, `User:<subject>` of the client certificate for mutual TLS
    (Kafka's default principal mapping), else a description."""
    protocol = str(config.get("security.protocol", "plaintext")).upper()
    mechanism = str(config.get("sasl.mechanism", "GSSAPI")).upper()
    scram_or_plain = mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
    if protocol.startswith("SASL") and scram_or_plain and config.get("sasl.username"):
        return f"User:{config['sasl.username']}"
    if protocol == "SSL" and config.get("ssl.certificate.location"):
        subject = _certificate_subject(str(config["ssl.certificate.location"]))
        if subject:
            return f"User:{subject}"
    if protocol == "PLAINTEXT":
        return "User:ANONYMOUS"
    return "the bridge's principal"


def _certificate_subject(path: str) -> str | None:
    try:
        from cryptography import x509

        cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
    except (OSError, ValueError):
        return None
    return cert.subject.rfc4514_string()


@dataclass(slots=True)
class _Deployment:
    app_id: str = "polybridge"
    topic_prefix: str = ""


_DEPLOYMENT = _Deployment()


def set_deployment(app_id: str, topic_prefix: str) -> None:
    """The names this process's ACL hints use (`app_id`, `kafka.topic_prefix`)."""
    _DEPLOYMENT.app_id, _DEPLOYMENT.topic_prefix = app_id, topic_prefix


def grant_for(resource: str, operation: str, name: str | None = None) -> AclGrant:
    """The `BRIDGE_ACLS` entry (for this deployment) that allows `operation` on
    `resource`; on a resource outside the deployment's names, that resource literally."""
    app_id, prefix = _DEPLOYMENT.app_id, _DEPLOYMENT.topic_prefix
    for template, _ in BRIDGE_ACLS:
        grant = template.named(app_id, prefix)
        if grant.resource != resource or grant.operation != operation:
            continue
        if (
            name is None
            or grant.name in ("*", name)
            or (grant.pattern == "PREFIXED" and name.startswith(grant.name))
        ):
            return grant
    return AclGrant(resource, "LITERAL", name or "*", operation)


def is_denied(err: LibKafkaError) -> bool:
    """True for an authorization error (a missing ACL)."""
    return err.code() in DENIED_RESOURCE


def denied(
    config: Mapping[str, Any],
    err: LibKafkaError,
    operation: str,
    what: str,
    name: str | None = None,
) -> str:
    """One line for authorization error `err` on `what` the bridge was doing: who was
    denied what, and the ACL (with the kafka-acls.sh options) that allows it."""
    resource = DENIED_RESOURCE.get(err.code(), "TOPIC")
    principal = principal_of(config)
    if resource == "CLUSTER":
        return (
            f"{what}: Kafka denied {principal} {operation} on the CLUSTER ({err.name()}). "
            f"Grant it: kafka-acls.sh --add --allow-principal {principal} --operation "
            f"{_camel(operation)} --cluster (`polybridge run` needs no cluster ACL, see {DOCS})"
        )
    grant = grant_for(resource, operation, name)
    on = f"{resource} {name}" if name else f"a {resource} under {grant.name!r}"
    return (
        f"{what}: Kafka denied {principal} {operation} on {on} ({err.name()}). "
        f"Grant {grant.operation} on {grant.resource} {grant.pattern.lower()} "
        f"{grant.name!r}: kafka-acls.sh {grant.kafka_acls(principal)} (see {DOCS})"
    )


# -- refused credentials -----------------------------------------------------------------

_REFUSAL_WINDOW_S = 60.0


class _Refusals:
    """The latest refusal of the bridge's credentials that any client's `error_cb` saw: a
    SASL authentication failure or a TLS handshake failure. librdkafka retries these
    forever and a request then just times out; the start-up checks ask here why."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._latest: tuple[float, LibKafkaError] | None = None

    def note(self, err: LibKafkaError) -> bool:
        """Remember `err` if it is a refusal; True if so."""
        if not refused(err):
            return False
        with self._lock:
            self._latest = (time.monotonic(), err)
        return True

    def latest(self) -> LibKafkaError | None:
        with self._lock:
            if self._latest is None or time.monotonic() - self._latest[0] > _REFUSAL_WINDOW_S:
                return None
            return self._latest[1]


REFUSALS = _Refusals()


def refused(err: LibKafkaError) -> bool:
    """True for a refusal of the credentials: SASL authentication failed, or the TLS
    handshake (a certificate not trusted by either side)."""
    text = err.str()
    if err.code() in (LibKafkaError._AUTHENTICATION, LibKafkaError._SSL):
        return True
    return err.code() == LibKafkaError._TRANSPORT and (
        "SSL" in text and ("certificate" in text or "handshake" in text)
    )


def refusal_line(config: Mapping[str, Any], err: LibKafkaError) -> str:
    """One line for a refused login: who, why, and what to fix (never a secret)."""
    bootstrap = config.get("bootstrap.servers", "?")
    principal = principal_of(config)
    cause = err.str()
    if err.code() == LibKafkaError._AUTHENTICATION:
        mechanism = config.get("sasl.mechanism", "GSSAPI")
        fix = (
            f"check sasl.username and the password (sasl.password, from "
            f"POLYBRIDGE_KAFKA__PROPERTIES__SASL.PASSWORD) for {mechanism}, and that the "
            "user exists on the cluster"
        )
    else:
        fix = (
            "check that the broker trusts the CA that signed ssl.certificate.location (its "
            "ssl.truststore), that ssl.ca.location holds the CA of the broker's certificate, "
            "and that neither certificate expired"
        )
    return f"Kafka at {bootstrap} refused the bridge's login as {principal}: {cause}; {fix}"
