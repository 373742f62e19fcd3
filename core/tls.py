"""TLS client settings shared by every connection millpond makes (Kafka, Cassandra).

One model, one builder: the ``ssl:`` block of ``log.kafka.security`` and the
``tls:`` block of the Cassandra sink are both :class:`TlsSettings`, and both
become a client-side :class:`ssl.SSLContext` through :func:`client_context`.
Building the context is also the check: ``validate`` builds it, so an
unreadable CA file, a certificate that does not match its key or a wrong key
password is reported against the file's line before anything connects.

A key password is a secret: it is only ever read from ``${ENV}`` (see
:func:`core.config.parse_pipeline`) and never appears in a message.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic.config import JsonDict

#: ``json_schema_extra`` of a field whose value must come from ``${ENV}``, never be written in a
#: pipeline file; :func:`core.config.parse_pipeline` refuses a literal one, in any config model
FROM_ENV_ONLY: JsonDict = {"from_env_only": True}


class TlsSettings(BaseModel):
    """Server verification (``ca_file``, ``check_hostname``) and an optional client certificate.

    Relative paths are from the working directory, as every path in a pipeline file.
    """

    model_config = ConfigDict(extra="forbid")

    #: PEM file of the CA(s) that signed the server's certificate; None trusts the system's CAs
    ca_file: str | None = None
    #: PEM certificate (chain) for mutual TLS; may hold the key too
    cert_file: str | None = None
    #: PEM private key of ``cert_file`` when it is a separate file
    key_file: str | None = None
    #: password of an encrypted ``key_file`` (from ``${ENV}`` only)
    key_password: SecretStr | None = Field(default=None, json_schema_extra=FROM_ENV_ONLY)
    #: check that the server's certificate names the host connected to (as Kafka's
    #: ssl.endpoint.identification.algorithm=https does); turn off only for test setups
    check_hostname: bool = True

    @model_validator(mode="after")
    def _loadable(self) -> TlsSettings:
        for name in ("ca_file", "cert_file", "key_file"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{name} {path!r} does not exist or is not a file")
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("key_file needs cert_file (the certificate the key belongs to)")
        if self.key_password is not None and self.cert_file is None:
            raise ValueError("key_password needs cert_file and key_file")
        client_context(self)  # raises ValueError naming the file that does not load
        return self


def client_context(settings: TlsSettings) -> ssl.SSLContext:
    """A client :class:`ssl.SSLContext` that verifies the server (TLS 1.2 or later).

    Raises ValueError naming the file that cannot be loaded (never the password).
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.ca_file is not None:
        try:
            context.load_verify_locations(cafile=settings.ca_file)
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(f"ca_file {settings.ca_file!r} is not a PEM CA certificate: {_reason(exc)}") from None
    if settings.cert_file is not None:
        password = settings.key_password.get_secret_value() if settings.key_password else None
        try:
            context.load_cert_chain(settings.cert_file, settings.key_file, password=password)
        except (ssl.SSLError, OSError) as exc:
            where = f"cert_file {settings.cert_file!r}"
            if settings.key_file is not None:
                where += f" with key_file {settings.key_file!r}"
            hint = " (or key_password is wrong)" if password is not None else ""
            raise ValueError(
                f"{where} does not load as a certificate and its private key{hint}: {_reason(exc)}"
            ) from None
    context.check_hostname = settings.check_hostname
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    return str(exc.strerror or exc) if isinstance(exc, OSError) else str(exc)
