"""A local Apache Kafka broker with authentication and ACLs, for the security tests and
`polybridge broker --security`.

`SecuredBroker` is an `EmbeddedBroker` (one KRaft node) with four listeners on 127.0.0.1:

    SASL_SSL    clients authenticate with SCRAM-SHA-512 over TLS (`sasl_bootstrap`)
    SSL         mutual TLS: clients present a certificate the broker's CA signed; the
                principal is the certificate's subject, e.g. `User:CN=bridge` (`ssl_bootstrap`);
                also the inter-broker listener, where the broker is `User:CN=broker`
    CONTROLLER  mutual TLS too: the broker reaches its controller as `User:CN=broker`
    PLAINTEXT   unauthenticated, `User:ANONYMOUS`, which no ACL names: it serves the broker
                list only (the start-up readiness check), nothing else

Every request is authorized by KRaft's `StandardAuthorizer`, `allow.everyone.if.no.acl.found`
false. The super users are `User:CN=broker` (the node itself) and `User:CN=admin`, the
administrator certificate (`admin_config()`) that creates SCRAM users and grants ACLs. No
listener hands out super-user rights without a certificate the CA signed.

The certificate authority, the broker's certificate and the client certificates are made
at start with `cryptography` (ECDSA P-256, valid for a day, like `bridge.sim.tls`), as PEM
files in `<data_dir>/tls/`: Kafka reads PEM key stores and trust stores directly
(`ssl.keystore.type=PEM`), librdkafka reads the same files (`ssl.ca.location`, ...).
"""

from __future__ import annotations

import argparse
import logging
import secrets
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from bridge.certificates import CertFiles, CertificateAuthority
from bridge.embedded import START_TIMEOUT_S, EmbeddedBroker, free_port
from bridge.errors import BridgeError
from bridge.kafka.acls import BRIDGE_ACLS, AclGrant

log = logging.getLogger(__name__)

SCRAM_MECHANISM = "SCRAM-SHA-512"
BROKER_CN = "broker"
ADMIN_CN = "admin"
ADMIN_TIMEOUT_S = 15.0
SECURED_START_TIMEOUT_S = 3 * START_TIMEOUT_S
"""How long `SecuredBroker.start()` waits: TLS on every listener makes a start slower, and
on a loaded machine the node's first TLS connection to its own controller can time out
once (10 s) before it registers."""


def secured_properties(
    broker: EmbeddedBroker, sasl_port: int, ssl_port: int, ca: Path, keystore: Path
) -> str:
    """The settings a `SecuredBroker` appends to the plain `server.properties` (a later
    key wins in a Java properties file)."""
    host = "127.0.0.1"
    settings = {
        "listeners": (
            f"PLAINTEXT://{host}:{broker.port},CONTROLLER://{host}:{broker.controller_port},"
            f"SASL_SSL://{host}:{sasl_port},SSL://{host}:{ssl_port}"
        ),
        "advertised.listeners": (
            f"PLAINTEXT://{host}:{broker.port},SASL_SSL://{host}:{sasl_port},"
            f"SSL://{host}:{ssl_port}"
        ),
        "listener.security.protocol.map": (
            "PLAINTEXT:PLAINTEXT,CONTROLLER:SSL,SASL_SSL:SASL_SSL,SSL:SSL"
        ),
        "inter.broker.listener.name": "SSL",
        "ssl.keystore.type": "PEM",
        "ssl.keystore.location": str(keystore),
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(ca),
        # Mutual TLS on SSL and CONTROLLER; SASL_SSL clients authenticate with SCRAM.
        "ssl.client.auth": "required",
        "listener.name.sasl_ssl.ssl.client.auth": "none",
        "sasl.enabled.mechanisms": SCRAM_MECHANISM,
        "listener.name.sasl_ssl.sasl.enabled.mechanisms": SCRAM_MECHANISM,
        # The broker only serves SCRAM (it never logs in with it): no user or password here.
        f"listener.name.sasl_ssl.{SCRAM_MECHANISM.lower()}.sasl.jaas.config": (
            "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        ),
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "allow.everyone.if.no.acl.found": "false",
        "super.users": f"User:CN={BROKER_CN};User:CN={ADMIN_CN}",
    }
    return "".join(f"{key}={value}\n" for key, value in settings.items())


class SecuredBroker(EmbeddedBroker):
    """An `EmbeddedBroker` with SASL_SSL (SCRAM-SHA-512) and mutual-TLS listeners and
    `StandardAuthorizer` ACLs (see the module docstring). `add_user()` creates SCRAM users,
    `issue()` client certificates, `grant()` / `revoke()` ACLs."""

    def __init__(
        self,
        data_dir: str | Path | None = None,
        log_path: str | Path | None = None,
        *,
        port: int | None = None,
        sasl_port: int | None = None,
        ssl_port: int | None = None,
    ) -> None:
        super().__init__(port, data_dir, log_path)
        self.sasl_port = sasl_port if sasl_port is not None else free_port()
        self.ssl_port = ssl_port if ssl_port is not None else free_port()
        self.ca = CertificateAuthority(self.data_dir / "tls")
        self._broker_cert = self.ca.issue(BROKER_CN, server=True)
        self.admin_cert = self.ca.issue(ADMIN_CN)
        self._keystore = self.data_dir / "tls" / "broker-keystore.pem"
        self._keystore.touch(mode=0o600)
        self._keystore.write_bytes(
            self._broker_cert.key_path.read_bytes() + self._broker_cert.cert_path.read_bytes()
        )

    @property
    def sasl_bootstrap(self) -> str:
        return f"127.0.0.1:{self.sasl_port}"

    @property
    def ssl_bootstrap(self) -> str:
        return f"127.0.0.1:{self.ssl_port}"

    def prepare(self) -> list[str]:
        base = super().prepare()
        with open(self.data_dir / "server.properties", "a") as config:
            config.write(
                secured_properties(
                    self, self.sasl_port, self.ssl_port, self.ca.ca_path, self._keystore
                )
            )
        return base

    def start(self, timeout: float = SECURED_START_TIMEOUT_S) -> SecuredBroker:
        super().start(timeout)
        return self

    def __enter__(self) -> SecuredBroker:
        return self if self.running else self.start()

    # -- clients -----------------------------------------------------------------------

    def sasl_config(self, username: str, password: str) -> dict[str, str]:
        """librdkafka settings of a SCRAM-SHA-512 client over TLS."""
        return {
            "bootstrap.servers": self.sasl_bootstrap,
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": SCRAM_MECHANISM,
            "sasl.username": username,
            "sasl.password": password,
            "ssl.ca.location": str(self.ca.ca_path),
        }

    def mtls_config(self, cert: CertFiles) -> dict[str, str]:
        """librdkafka settings of a mutual-TLS client presenting `cert`."""
        return {
            "bootstrap.servers": self.ssl_bootstrap,
            "security.protocol": "SSL",
            "ssl.certificate.location": str(cert.cert_path),
            "ssl.key.location": str(cert.key_path),
            "ssl.ca.location": str(self.ca.ca_path),
        }

    def admin_config(self) -> dict[str, str]:
        """librdkafka settings of the administrator (a super user, over mutual TLS)."""
        return self.mtls_config(self.admin_cert)

    def issue(self, common_name: str) -> CertFiles:
        """A client certificate signed by the broker's CA (principal `User:CN=<name>`)."""
        return self.ca.issue(common_name)

    def add_user(self, username: str, password: str | None = None) -> str:
        """Create (or update) SCRAM-SHA-512 user `username`; its password (new if None)."""
        return add_scram_user(self.admin_config(), username, password)

    def grant(self, principal: str, grants: Iterable[AclGrant]) -> None:
        """Allow `principal` each of `grants` (from any host)."""
        grant_acls(self.admin_config(), principal, grants)


def _admin(config: Mapping[str, str]) -> Any:
    from confluent_kafka.admin import AdminClient

    from bridge.kafka.client_log import client_log_config

    return AdminClient({**config, **client_log_config(config)})


def add_scram_user(admin_config: Mapping[str, str], username: str, password: str | None) -> str:
    """Create (or update) SCRAM-SHA-512 user `username` as the administrator of
    `admin_config`; its password (a new random one if None)."""
    from confluent_kafka.admin import (  # type: ignore[attr-defined]
        ScramCredentialInfo,
        ScramMechanism,
        UserScramCredentialUpsertion,
    )

    password = password if password is not None else secrets.token_urlsafe(18)
    upsert = UserScramCredentialUpsertion(
        username, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096), password.encode()
    )
    admin = _admin(admin_config)  # kept: a destroyed client fails its pending futures
    futures = admin.alter_user_scram_credentials([upsert], request_timeout=ADMIN_TIMEOUT_S)
    for future in futures.values():
        future.result(timeout=ADMIN_TIMEOUT_S)
    return password


def grant_acls(admin_config: Mapping[str, str], principal: str, grants: Iterable[AclGrant]) -> None:
    """Allow `principal` each of `grants`, from any host."""
    bindings = [_binding(principal, g) for g in grants]
    if not bindings:
        return
    admin = _admin(admin_config)
    for future in admin.create_acls(bindings, request_timeout=ADMIN_TIMEOUT_S).values():
        future.result(timeout=ADMIN_TIMEOUT_S)


def _binding(principal: str, grant: AclGrant) -> Any:
    from confluent_kafka.admin import (  # type: ignore[attr-defined]
        AclBinding,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    try:
        return AclBinding(
            ResourceType[grant.resource],
            grant.name,
            ResourcePatternType[grant.pattern],
            principal,
            "*",
            AclOperation[grant.operation],
            AclPermissionType.ALLOW,
        )
    except KeyError as exc:
        raise BridgeError(f"not an ACL: {grant}") from exc


def client_settings(config: Mapping[str, str]) -> str:
    """`config` as `[kafka.properties]` TOML lines (without its bootstrap.servers)."""
    return "".join(
        f'"{key}" = "{value}"\n' for key, value in config.items() if key != "bootstrap.servers"
    )


# -- `polybridge broker --secure` -----------------------------------------------------------

LOCAL_USER = "polybridge"
"""The SCRAM user and certificate subject (`CN=polybridge`) `polybridge broker --secure`
makes and grants the bridge's ACLs to."""


def add_security_arguments(parser: argparse.ArgumentParser) -> None:
    """`polybridge broker`'s security options."""
    group = parser.add_argument_group("security (--secure)")
    group.add_argument(
        "--secure",
        action="store_true",
        help="one broker with SASL_SSL (SCRAM-SHA-512) on port+1 and mutual TLS on port+2, "
        "StandardAuthorizer ACLs, certificates made at start in DATA_DIR/tls; user "
        f"{LOCAL_USER} and User:CN={LOCAL_USER} get the bridge's ACLs (docs/operations.md"
        "#security)",
    )
    group.add_argument(
        "--app-id", default="polybridge", help="with --secure: the app_id the ACLs are for"
    )
    group.add_argument(
        "--topic-prefix",
        default="",
        help="with --secure: the kafka.topic_prefix the ACLs are for (default: every topic)",
    )


def serve_secured(args: argparse.Namespace, stop: threading.Event) -> int:
    """Run a `SecuredBroker` for `polybridge broker --secure` until `stop`."""
    if args.nodes != 1:
        raise BridgeError("--secure starts one broker: leave out --nodes")
    port = int(args.port)
    with SecuredBroker(
        args.data_dir, args.log_file, port=port, sasl_port=port + 1, ssl_port=port + 2
    ) as broker:
        tls = broker.data_dir / "tls"
        password_file = tls / f"{LOCAL_USER}.password"
        password_file.touch(mode=0o600)
        password_file.write_text(broker.add_user(LOCAL_USER))
        cert = broker.issue(LOCAL_USER)
        grants = [grant.named(args.app_id, args.topic_prefix) for grant, _ in BRIDGE_ACLS]
        for principal in (f"User:{LOCAL_USER}", cert.principal):
            broker.grant(principal, grants)
        sasl = broker.sasl_config(LOCAL_USER, "")
        del sasl["sasl.password"]
        print(
            f"bootstrap.servers={broker.bootstrap_servers}  (PLAINTEXT: metadata only)\n"
            f"# SASL_SSL, SCRAM-SHA-512: kafka.bootstrap_servers = {broker.sasl_bootstrap}; the "
            f"password is in {password_file}, for {PASSWORD_ENV}\n"
            f"[kafka.properties]\n{client_settings(sasl)}"
            f"# mutual TLS: kafka.bootstrap_servers = {broker.ssl_bootstrap}\n"
            f"[kafka.properties]\n{client_settings(broker.mtls_config(cert))}"
            f"# administrator (super user), e.g. for kafka-acls.sh: {broker.admin_cert.cert_path}"
            f" {broker.admin_cert.key_path}",
            flush=True,
        )
        while not stop.wait(0.5):
            if not broker.running:
                raise BridgeError("embedded broker exited unexpectedly")
    return 0


PASSWORD_ENV = "POLYBRIDGE_KAFKA__PROPERTIES__SASL.PASSWORD"
