"""Throwaway TLS material for the simulator: a CA and a server certificate it signed
(`bridge.certificates`). The server certificate names 127.0.0.1, ::1 and localhost, so
clients that trust the CA file (`GRPC_DEFAULT_SSL_ROOTS_FILE_PATH`,
`grpc.ssl_channel_credentials(ca)`, an `ssl` context) verify the simulator like a real
endpoint.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from bridge.certificates import CertificateAuthority


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM bytes and the files they were written to."""

    ca_cert_pem: bytes
    cert_pem: bytes
    key_pem: bytes
    ca_path: Path
    cert_path: Path
    key_path: Path

    def server_ssl_context(self) -> ssl.SSLContext:
        """An `ssl` server context presenting the server certificate (for HTTPS)."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_path, self.key_path)
        return context


def generate_tls(directory: Path) -> TlsFiles:
    """Create `ca.pem`, `server.pem` and `server.key` in `directory` (created if missing)."""
    ca = CertificateAuthority(directory, "polybridge simulator CA")
    server = ca.issue("server", server=True)
    return TlsFiles(
        ca_cert_pem=ca.ca_path.read_bytes(),
        cert_pem=server.cert_path.read_bytes(),
        key_pem=server.key_path.read_bytes(),
        ca_path=ca.ca_path,
        cert_path=server.cert_path,
        key_path=server.key_path,
    )
