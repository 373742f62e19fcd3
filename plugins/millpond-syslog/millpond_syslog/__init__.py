"""millpond-syslog: a syslog source for millpond (RFC 5424 and RFC 3164, over UDP and TCP).

Installed with ``pip install plugins/millpond-syslog``, it registers through the
``millpond`` entry-point group like any third-party plugin; pipelines then use
``type: syslog``.
"""

from __future__ import annotations

from millpond.connector import Source
from millpond.hookspecs import hookimpl

from .parse import SyslogMessage, parse
from .source import SyslogConfig, SyslogSource

__version__ = "0.1.0"
__all__ = ["SyslogConfig", "SyslogMessage", "SyslogSource", "parse"]


@hookimpl
def millpond_sources() -> dict[str, type[Source]]:
    return {"syslog": SyslogSource}
