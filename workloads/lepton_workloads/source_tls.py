"""Which certificates a remote source is verified against: the system roots, plus the source's CA bundle.

The operator mounts a source's ``caBundle`` ConfigMap into the fetching pod and
names the file in ``LEPTON_SOURCE_CA_FILE`` (``render.common.source_trust``;
its path is ``/lepton/source-ca/<ConfigMap name>/ca.crt``, so a message that
names the file names the ConfigMap). :class:`Trust` reads it back and builds
the one :class:`ssl.SSLContext` every https request of a fetch uses: http.client
through urllib for https sources, urllib3 (the MinIO client's ``http_client``)
for s3:// over https.

The bundle is *added* to the system roots (``ssl.create_default_context()``,
then ``load_verify_locations``), never used in their place the way ``requests``'
``verify=path`` or ``SSL_CERT_FILE`` would: it is how a private CA is trusted on
a node or in an image (``update-ca-certificates``), and it makes every bundle
people actually have (trust-manager's, with or without its default CAs;
OpenShift's injected one) behave the same. Verification itself (chain and host
name) is never turned off: there is no setting for it.

A certificate that does not verify is recognised in whatever the HTTP stack
wrapped it in (:func:`certificate_failure`) and described with what was
trusted (:func:`refusal`), so the reason a user reads is the certificate's, not
"unreachable". ``sources`` turns both into a ``SourceError`` with reason
:data:`TLS_REASON`; this module raises nothing of its own but what ``ssl``
raises for an unusable bundle, so it does not depend on ``sources``.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

#: The environment variable naming the CA bundle file (set by the operator from ``caBundle``).
CA_FILE_ENV = "LEPTON_SOURCE_CA_FILE"
#: The reason of every TLS failure of a source: an untrusted certificate, or an unusable bundle.
TLS_REASON = "SourceTLSError"
#: How deep :func:`certificate_failure` looks into wrapped errors (urllib3 nests three deep).
MAX_DEPTH = 8


@dataclass(frozen=True)
class Trust:
    """The certificates a source is verified against: the system roots, plus ``ca_file`` when set."""

    ca_file: Path | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Trust:
        """The trust the operator set up: ``LEPTON_SOURCE_CA_FILE``, unset or empty for the system roots only."""
        value = (os.environ if environ is None else environ).get(CA_FILE_ENV, "").strip()
        return cls(Path(value) if value else None)

    def context(self) -> ssl.SSLContext:
        """A client context verifying chain and host name against the system roots plus the bundle.

        Raises ``OSError`` for a bundle that cannot be read and ``ssl.SSLError``
        for one that holds no PEM certificate.
        """
        context = ssl.create_default_context()
        if self.ca_file is not None:
            context.load_verify_locations(cafile=str(self.ca_file))
        return context

    def describe(self) -> str:
        """What is trusted, for a message: names the bundle file, or says how to add one."""
        if self.ca_file is None:
            return "trusted: the system roots only; a source signed by a private CA needs caBundle"
        return f"trusted: the system roots and the CA bundle {self.ca_file}"


def certificate_failure(error: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate verification error inside ``error``, or ``None`` when it is not one.

    urllib wraps it in ``URLError.reason``; urllib3 in ``SSLError`` inside
    ``MaxRetryError.reason``; either may chain it as ``__cause__``. All are
    followed, to :data:`MAX_DEPTH`.
    """
    pending: list[tuple[BaseException, int]] = [(error, 0)]
    while pending:
        current, depth = pending.pop()
        if isinstance(current, ssl.SSLCertVerificationError):
            return current
        if depth < MAX_DEPTH:
            inner = (getattr(current, "reason", None), current.__cause__, current.__context__, *current.args)
            pending.extend((item, depth + 1) for item in inner if isinstance(item, BaseException))
    return None


def refusal(target: str, failure: ssl.SSLCertVerificationError, trust: Trust) -> str:
    """``<target>: certificate verify failed: <why> (<what was trusted>)``."""
    why = failure.verify_message or str(failure)
    return f"{target}: certificate verify failed: {why} ({trust.describe()})"


def unusable_bundle(trust: Trust, error: Exception) -> str:
    """The message for a bundle :meth:`Trust.context` could not load."""
    return f"the CA bundle {trust.ca_file} is not a readable PEM certificate bundle: {error}"
