"""Generated TLS material verifies as 127.0.0.1, ::1 and localhost."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from cryptography import x509

from bridge.sim.tls import generate_tls


def test_server_certificate_names_loopback_and_is_signed_by_the_ca(tmp_path: Path) -> None:
    files = generate_tls(tmp_path)
    cert = x509.load_pem_x509_certificate(files.cert_pem)
    ca = x509.load_pem_x509_certificate(files.ca_path.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert set(names.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    }
    cert.verify_directly_issued_by(ca)
    assert files.key_path.stat().st_mode & 0o077 == 0
    files.server_ssl_context()  # loads the chain
