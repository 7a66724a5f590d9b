"""The missing-ACL and refused-login lines (`bridge.kafka.acls`): which grant they name,
whose principal, and which librdkafka errors count as a refused login. What the bridge
does with them on a real secured broker: tests/integration/test_kafka_security.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from confluent_kafka import KafkaError as LibKafkaError

from bridge.embedded_security import CertificateAuthority
from bridge.kafka.acls import (
    AclGrant,
    bridge_acls,
    denied,
    grant_for,
    principal_of,
    refusal_line,
    refused,
    set_deployment,
)


@pytest.fixture(autouse=True)
def deployment() -> None:
    set_deployment("app", "pfx.")


def test_the_grant_named_is_the_deployments_row_or_the_resource_itself() -> None:
    assert grant_for("TOPIC", "WRITE", "pfx.polybridge.state") == AclGrant(
        "TOPIC", "PREFIXED", "pfx.", "WRITE"
    )
    assert grant_for("TOPIC", "READ") == AclGrant("TOPIC", "PREFIXED", "pfx.", "READ")
    assert grant_for("TOPIC", "READ", "elsewhere") == AclGrant(
        "TOPIC", "LITERAL", "elsewhere", "READ"
    )
    assert grant_for("TRANSACTIONAL_ID", "WRITE", "app.dropcopy.executions") == AclGrant(
        "TRANSACTIONAL_ID", "PREFIXED", "app.", "WRITE"
    )
    assert grant_for("GROUP", "READ", "app") == AclGrant("GROUP", "LITERAL", "app", "READ")


def test_without_a_topic_prefix_the_topic_rows_cover_every_topic() -> None:
    topics = [g for g in bridge_acls("app", "") if g.resource == "TOPIC"]
    assert topics and all(g.pattern == "LITERAL" and g.name == "*" for g in topics)


def test_a_missing_acl_line_names_principal_grant_and_command() -> None:
    err = LibKafkaError(LibKafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED)
    conf = {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512"}
    line = denied({**conf, "sasl.username": "bridge"}, err, "WRITE", "init", "app.s")
    assert "Kafka denied User:bridge WRITE on TRANSACTIONAL_ID app.s" in line
    assert "--operation Write --transactional-id 'app.' --resource-pattern-type prefixed" in line
    line = denied(
        {}, LibKafkaError(LibKafkaError.TOPIC_AUTHORIZATION_FAILED), "DESCRIBE_CONFIGS", "x"
    )
    assert "User:ANONYMOUS" in line and "--operation DescribeConfigs --topic 'pfx.'" in line


def test_the_principal_of_a_client_certificate_is_its_subject(tmp_path: Path) -> None:
    cert = CertificateAuthority(tmp_path).issue("bridge")
    conf = {"security.protocol": "SSL", "ssl.certificate.location": str(cert.cert_path)}
    assert principal_of(conf) == cert.principal == "User:CN=bridge"
    assert principal_of({"security.protocol": "SASL_SSL", "sasl.mechanism": "OAUTHBEARER"}) == (
        "the bridge's principal"
    )


def test_refused_logins_are_told_from_a_broker_being_away() -> None:
    sasl = LibKafkaError(LibKafkaError._AUTHENTICATION, "SASL authentication error: invalid")
    alert = LibKafkaError(
        LibKafkaError._TRANSPORT, "Receive failed: SSL routines::ssl/tls alert bad certificate"
    )
    away = LibKafkaError(LibKafkaError._TRANSPORT, "Connect to ipv4#127.0.0.1:9092 failed")
    assert refused(sasl) and refused(alert) and not refused(away)
    conf = {"bootstrap.servers": "b:9096", "sasl.mechanism": "PLAIN", "sasl.password": "hunter2"}
    line = refusal_line({**conf, "security.protocol": "SASL_SSL", "sasl.username": "u"}, sasl)
    assert line.startswith("Kafka at b:9096 refused the bridge's login as User:u: ")
    assert "hunter2" not in line
