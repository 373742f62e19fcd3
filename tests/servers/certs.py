"""Throw-away certificates for the TLS server fixtures, made with openssl (and keytool for Java trust).

``make_pki(dir)`` writes a CA, a server certificate for 127.0.0.1/localhost
signed by it, a client certificate signed by it (for mutual TLS), a second,
unrelated CA (to show that a wrong CA is refused), and the server's key and
certificate as a PKCS12 keystore plus the CA as a PKCS12 truststore for the
Java servers (Kafka, Cassandra). Everything lives one day.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

#: Password of the Java keystore and truststore (test-only; the servers read it from their config).
STORE_PASSWORD = "millpond-store-pw"
#: Password of the encrypted copy of the client key (``client_key_encrypted``).
CLIENT_KEY_PASSWORD = "millpond-key-pw"


@dataclass(frozen=True)
class Pki:
    ca: Path
    other_ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    client_key_encrypted: Path
    keystore: Path  # PKCS12: the server key and certificate chain
    truststore: Path  # PKCS12: the CA


def _run(*cmd: str | Path) -> None:
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"`{' '.join(str(c) for c in cmd[:3])} ...` failed: {(done.stdout + done.stderr)[-800:]}")


def _ca(base: Path, name: str) -> tuple[Path, Path]:
    key, cert = base / f"{name}.key", base / f"{name}.pem"
    _run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={name}",
         "-keyout", key, "-out", cert, "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return key, cert


def _leaf(base: Path, name: str, ca_key: Path, ca_cert: Path, ext: str) -> tuple[Path, Path]:
    key, csr, cert, extfile = (base / f"{name}.key", base / f"{name}.csr", base / f"{name}.pem",
                               base / f"{name}.ext")
    extfile.write_text(ext)
    _run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", key, "-out", csr)
    _run("openssl", "x509", "-req", "-in", csr, "-CA", ca_cert, "-CAkey", ca_key, "-CAcreateserial",
         "-days", "1", "-out", cert, "-extfile", extfile)
    return key, cert


def make_pki(base: Path) -> Pki:
    """Write the certificates and stores under ``base`` (see the module docstring)."""
    for tool in ("openssl", "keytool"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is not on the PATH (needed to make test certificates)")
    base.mkdir(parents=True, exist_ok=True)
    ca_key, ca = _ca(base, "millpond-test-ca")
    _, other_ca = _ca(base, "unrelated-ca")
    server_key, server_cert = _leaf(
        base, "server", ca_key, ca,
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n")
    client_key, client_cert = _leaf(base, "client", ca_key, ca, "extendedKeyUsage=clientAuth\n")
    encrypted = base / "client-encrypted.key"
    _run("openssl", "pkey", "-in", client_key, "-aes256", "-passout", f"pass:{CLIENT_KEY_PASSWORD}",
         "-out", encrypted)
    keystore, truststore = base / "server.p12", base / "truststore.p12"
    _run("openssl", "pkcs12", "-export", "-in", server_cert, "-inkey", server_key, "-certfile", ca,
         "-name", "server", "-out", keystore, "-passout", f"pass:{STORE_PASSWORD}")
    _run("keytool", "-importcert", "-noprompt", "-alias", "ca", "-file", ca, "-keystore", truststore,
         "-storetype", "PKCS12", "-storepass", STORE_PASSWORD)
    for path in base.iterdir():
        path.chmod(0o644)  # the servers may run as another user (Postgres as 'postgres')
    return Pki(ca, other_ca, server_cert, server_key, client_cert, client_key, encrypted, keystore, truststore)
