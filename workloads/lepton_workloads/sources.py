"""Fetching a remote source into a local directory: the one fetch path of the workloads.

The dataset preparer (``LeptonDataset`` ``spec.source``) and the model stager
(``InferenceService`` ``spec.model.source``) both read their source through
:func:`fetch`, and both get the same environment from the operator's shared
rendering (``render.common.source_env``): :meth:`S3Options.from_env` and
:func:`token_from_env` read it back. Accepted sources:

* ``pvc://<claim>/<path>`` - the claim is mounted read-only by the Job at
  ``source_root``; ``<path>`` under it is a directory or a single file. Read in
  place, nothing is copied.
* a local path (``/data/raw``) or ``file://`` URI - the same, for tests and for
  sources already mounted some other way.
* ``http://`` / ``https://`` ending in ``/`` - a *directory index*: an HTML page
  of links (what ``python -m http.server``, nginx ``autoindex`` and Apache
  produce). Every link below the URI is followed; links to sub-directories
  (ending in ``/``) are walked recursively, everything else is downloaded,
  keeping the relative path.
* ``http://`` / ``https://`` not ending in ``/`` - a *single object*: a tar
  archive (``.tar``, ``.tar.gz``, ``.tgz``; unpacked after download) or a data
  file (``.jsonl``, ``.csv``, ``.txt``...) used as it is.
* ``s3://<bucket>/<prefix>/`` (ending in ``/``, or the bucket alone) - every
  object under the prefix, keeping relative keys; ``s3://<bucket>/<key>`` - a
  single object, as for http. Through the MinIO Python SDK, so any
  S3-compatible store works: ``endpoint`` (``LEPTON_S3_ENDPOINT``, default AWS),
  ``AWS_REGION``, and ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` /
  ``AWS_SESSION_TOKEN`` from the Secret (anonymous when unset).

A single object is hashed while it downloads (on its own thread, see
:mod:`lepton_workloads.hashing_writer`), so ``verify.sha256`` costs no extra read; a download shorter than its ``Content-Length`` is an error, never a
silently truncated dataset. A bearer token (``LEPTON_SOURCE_TOKEN``, from the
Secret by reference) is sent as ``Authorization`` to the source host only.
Every failure raises :class:`SourceError` with a CamelCase reason, which the
preparer puts in its result document and the stager in its termination message.

https sources and s3:// over https are verified against one
:class:`~lepton_workloads.source_tls.Trust` per fetch (the system roots plus
the source's ``caBundle``, ``LEPTON_SOURCE_CA_FILE``); a certificate that does
not verify, or a bundle that cannot be loaded, is ``SourceTLSError`` naming
what was trusted, never ``SourceUnreachable``. Nothing is written outside
``staging`` before the fetch succeeds, so a refused source loses nothing.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import ssl
import tarfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from lepton_workloads.hashing_writer import HashingWriter
from lepton_workloads.source_tls import TLS_REASON, Trust, certificate_failure, refusal, unusable_bundle

CHUNK = 1 << 20
TIMEOUT_SECONDS = 60.0
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")
#: S3 error codes that mean the credentials (not the store) are the problem.
DENIED = frozenset({"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"})
#: Called with the bytes fetched so far and the total when known.
Progress = Callable[[int, int | None], None]


class SourceError(Exception):
    """The source could not be fetched or does not match what was expected."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Fetched:
    """What a fetch produced: the directory to read records from and facts about the source."""

    root: Path
    bytes: int
    sha256: str | None
    """sha256 of the single object fetched; ``None`` for a directory source."""


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.links.extend(value for name, value in attrs if name == "href" and value)


def is_archive(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def tls_context(trust: Trust) -> ssl.SSLContext:
    """``trust``'s context; an unusable CA bundle is a :data:`~lepton_workloads.source_tls.TLS_REASON` error."""
    try:
        return trust.context()
    except (OSError, ValueError) as error:  # ssl.SSLError is an OSError
        raise SourceError(TLS_REASON, unusable_bundle(trust, error)) from error


def _unreachable_or_refused(target: str, error: BaseException, trust: Trust) -> SourceError:
    """A transport error as a :class:`SourceError`: ``SourceTLSError`` when a certificate did not verify."""
    failure = certificate_failure(error)
    if failure is not None:
        return SourceError(TLS_REASON, refusal(target, failure, trust))
    return SourceError("SourceUnreachable", f"{target}: {getattr(error, 'reason', None) or error}")


@dataclass(frozen=True)
class _Http:
    """How every request of one http(s) fetch is made: the bearer token and the TLS trust."""

    token: str | None
    trust: Trust
    context: ssl.SSLContext


def _open(url: str, client: _Http) -> http.client.HTTPResponse:
    request = urllib.request.Request(url)  # noqa: S310 - the scheme is checked by fetch()
    if client.token:
        request.add_header("Authorization", f"Bearer {client.token}")
    try:
        response: http.client.HTTPResponse = urllib.request.urlopen(  # noqa: S310
            request, timeout=TIMEOUT_SECONDS, context=client.context
        )
    except urllib.error.HTTPError as error:
        raise SourceError("SourceUnreachable", f"GET {url}: HTTP {error.code} {error.reason}") from error
    except (urllib.error.URLError, OSError) as error:
        raise _unreachable_or_refused(f"GET {url}", error, client.trust) from error
    return response


def _download(url: str, target: Path, client: _Http, done: int, progress: Progress) -> tuple[int, str]:
    """Stream ``url`` to ``target``; returns (bytes, sha256 hex). Short reads are errors."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with _open(url, client) as response, HashingWriter(target) as out:
        length = response.headers.get("Content-Length")
        expected = int(length) if length and length.isdigit() else None
        try:
            while chunk := response.read(CHUNK):
                out.write(chunk)
                progress(done + out.size, None)
        except (OSError, http.client.HTTPException) as error:  # IncompleteRead, reset connections
            raise SourceError("SourceTruncated", f"GET {url}: download broke off after {out.size} bytes: {error}") from error
        size, sha = out.close()
    if expected is not None and size != expected:
        raise SourceError("SourceTruncated", f"GET {url}: got {size} of {expected} bytes")
    return size, sha


def _index_links(url: str, client: _Http) -> list[str]:
    with _open(url, client) as response:
        page = response.read().decode("utf-8", errors="replace")
    parser = _Links()
    parser.feed(page)
    links = []
    for href in parser.links:
        absolute = urllib.parse.urljoin(url, href.split("#", 1)[0].split("?", 1)[0])
        if absolute.startswith(url) and absolute != url:  # below the index only: no parent, no other host
            links.append(absolute)
    return sorted(set(links))


def safe_members(tar: tarfile.TarFile, into: Path) -> list[tarfile.TarInfo]:
    """The members of ``tar`` that ``extractall`` may write: files and directories inside ``into``.

    What tarfile's ``"data"`` filter enforces, for the Pythons that lack it (Debian bookworm's
    3.11.2): no absolute or escaping paths, no links or devices; anything else is refused
    with the member's name, never skipped in silence.
    """
    root = into.resolve()
    members = tar.getmembers()
    for member in members:
        target = (root / member.name).resolve()
        if not (member.isfile() or member.isdir()) or (target != root and root not in target.parents):
            raise SourceError("InvalidData", f"{member.name}: an archive member that is not a file or folder inside it")
    return members


def _unpack(archive: Path, into: Path) -> None:
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(into, members=safe_members(tar, into))
    except (tarfile.TarError, EOFError, OSError) as error:
        raise SourceError("InvalidData", f"{archive.name}: not a readable tar archive: {error}") from error
    archive.unlink()


def _settle(staging: Path, name: str, size: int, sha: str, expected: str | None) -> Fetched:
    """A single object, downloaded into ``staging``: checked against ``expected``, then unpacked.

    The checksum comes first, so an archive that is not the one asked for is never unpacked.
    """
    if expected is not None and sha != expected.lower():
        raise SourceError("ChecksumMismatch", f"source sha256 is {sha}, expected {expected.lower()}")
    if is_archive(name):
        _unpack(staging / name, staging)
    return Fetched(staging, size, sha)


def _fetch_http(uri: str, staging: Path, client: _Http, progress: Progress, sha256: str | None) -> Fetched:
    shutil.rmtree(staging, ignore_errors=True)  # a retried pod starts the download over, cleanly
    staging.mkdir(parents=True)
    if not uri.endswith("/"):
        name = Path(urllib.parse.urlparse(uri).path).name or "data"
        size, sha = _download(uri, staging / name, client, 0, progress)
        return _settle(staging, name, size, sha, sha256)
    total = 0
    pending = [uri]
    while pending:
        index = pending.pop()
        for link in _index_links(index, client):
            if link.endswith("/"):
                pending.append(link)
                continue
            relative = urllib.parse.unquote(link[len(uri) :])
            size, _ = _download(link, staging / relative, client, total, progress)
            total += size
    return Fetched(staging, total, None)


@dataclass(frozen=True)
class S3Options:
    """How to reach an S3-compatible store (all optional)."""

    endpoint: str | None = None
    region: str | None = None
    access_key: str | None = None
    secret_key: str | None = None
    session_token: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> S3Options:
        """The options the operator passes to a pod: ``LEPTON_S3_ENDPOINT``, ``AWS_REGION``, ``AWS_*`` keys."""
        env = os.environ if environ is None else environ
        return cls(
            endpoint=_setting(env, "LEPTON_S3_ENDPOINT"), region=_setting(env, "AWS_REGION"),
            access_key=_setting(env, "AWS_ACCESS_KEY_ID"), secret_key=_setting(env, "AWS_SECRET_ACCESS_KEY"),
            session_token=_setting(env, "AWS_SESSION_TOKEN"),
        )  # fmt: skip


def _setting(environ: Mapping[str, str], name: str) -> str | None:
    """An environment setting, unset when empty (an optional secretKeyRef with no key gives none)."""
    return environ.get(name, "").strip() or None


def token_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    """The bearer token for http(s) sources (``LEPTON_SOURCE_TOKEN``, from the Secret by reference)."""
    return _setting(os.environ if environ is None else environ, "LEPTON_SOURCE_TOKEN")


DEFAULT_S3_ENDPOINT = "https://s3.amazonaws.com"


def _s3_client(options: S3Options, context: ssl.SSLContext) -> Any:
    import urllib3
    from minio import Minio

    endpoint = urllib.parse.urlparse(options.endpoint or DEFAULT_S3_ENDPOINT)
    # Few, quick retries: an unreachable store should fail the attempt in seconds and
    # leave retrying to the Job's backoff, not hang in the client.
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=10, read=TIMEOUT_SECONDS),
        retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
        ssl_context=context,  # used for https endpoints only; verifies chain and host name
    )
    return Minio(
        endpoint.netloc, access_key=options.access_key, secret_key=options.secret_key,
        session_token=options.session_token, secure=endpoint.scheme == "https", region=options.region,
        http_client=http,
    )  # fmt: skip


def root_cause(error: BaseException) -> str:
    """The innermost cause of a transport error, as people read it (``Connection refused``, not urllib3's wrappers)."""
    seen: set[int] = set()
    while id(error) not in seen:
        seen.add(id(error))
        inner = getattr(error, "reason", None)
        following = inner if isinstance(inner, BaseException) else (error.__cause__ or error.__context__)
        if following is None:
            break
        error = following
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return f"{type(error).__name__}: {error}"


def _s3_errors(uri: str, trust: Trust, endpoint: str) -> Any:
    """A context manager turning the SDK's and urllib3's errors into :class:`SourceError`."""
    import contextlib

    import urllib3
    from minio.error import MinioException, S3Error

    @contextlib.contextmanager
    def translate() -> Iterator[None]:
        try:
            yield
        except S3Error as error:
            reason = "AccessDenied" if error.code in DENIED else "SourceUnreachable"
            raise SourceError(reason, f"{uri}: {error.code}: {error.message}") from error
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as error:
            if certificate_failure(error) is not None:
                raise _unreachable_or_refused(uri, error, trust) from error
            raise SourceError("SourceUnreachable", f"{uri}: the endpoint {endpoint} failed: {root_cause(error)}") from error

    return translate()


def _s3_download(client: Any, bucket: str, key: str, target: Path, done: int, progress: Progress) -> tuple[int, str]:
    target.parent.mkdir(parents=True, exist_ok=True)
    response = client.get_object(bucket, key)
    try:
        expected = int(response.headers.get("Content-Length", -1))
        with HashingWriter(target) as out:
            for chunk in response.stream(CHUNK):
                out.write(chunk)
                progress(done + out.size, None)
            size, sha = out.close()
    finally:
        response.close()
        response.release_conn()
    if expected >= 0 and size != expected:
        raise SourceError("SourceTruncated", f"s3://{bucket}/{key}: got {size} of {expected} bytes")
    return size, sha


def _fetch_s3(uri: str, staging: Path, options: S3Options, trust: Trust, progress: Progress, sha256: str | None) -> Fetched:
    parsed = urllib.parse.urlparse(uri)
    bucket, key = parsed.netloc, urllib.parse.unquote(parsed.path).lstrip("/")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    client = _s3_client(options, tls_context(trust))
    with _s3_errors(uri, trust, options.endpoint or DEFAULT_S3_ENDPOINT):
        if key and not key.endswith("/"):
            name = Path(key).name
            size, sha = _s3_download(client, bucket, key, staging / name, 0, progress)
            return _settle(staging, name, size, sha, sha256)
        objects = [o for o in client.list_objects(bucket, prefix=key or None, recursive=True) if not o.is_dir]
        total_expected = sum(int(o.size or 0) for o in objects)
        total = 0
        for item in objects:
            relative = item.object_name[len(key) :]
            size, _ = _s3_download(client, bucket, item.object_name, staging / relative, total, progress)
            total += size
            progress(total, total_expected)
    return Fetched(staging, total, None)


def _fetch_local(path: Path, progress: Progress) -> Fetched:
    if not path.exists():
        raise SourceError("SourceUnreachable", f"{path}: no such file or directory")
    if path.is_dir():
        size = sum(item.stat().st_size for item in path.rglob("*") if item.is_file())
        progress(size, size)
        return Fetched(path, size, None)
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    size = path.stat().st_size
    progress(size, size)
    return Fetched(path, size, digest.hexdigest())


def local_path(uri: str, source_root: Path) -> Path | None:
    """The filesystem path of a ``pvc://``, ``file://`` or plain-path source; ``None`` for remote ones."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme == "pvc":
        return source_root / urllib.parse.unquote(parsed.path).lstrip("/")
    if parsed.scheme == "file":
        return Path(urllib.parse.unquote(parsed.path))
    if parsed.scheme == "":
        return Path(uri)
    return None


def fetch(
    uri: str,
    staging: Path,
    *,
    source_root: Path,
    token: str | None,
    progress: Progress,
    s3: S3Options | None = None,
    sha256: str | None = None,
    trust: Trust | None = None,
) -> Fetched:
    """Make ``uri`` readable as local files; see the module docstring for what is accepted.

    ``trust``: what https and s3-over-https sources are verified against; the
    system roots when ``None`` (callers pass ``Trust.from_env()``).

    ``sha256``: what a single-object source must hash to, checked before it is unpacked
    (``ChecksumMismatch``); a directory source cannot have one (``ChecksumNotApplicable``).
    """
    path = local_path(uri, source_root)
    directory = path.is_dir() if path is not None else uri.endswith("/")
    if sha256 is not None and directory:
        raise SourceError("ChecksumNotApplicable", "verify.sha256 applies to a single-object source, not a directory")
    if path is not None:
        fetched = _fetch_local(path, progress)
        if fetched.sha256 is None:  # a directory, read in place
            return fetched
        if not is_archive(path.name):  # a single file, read in place
            _settle(path.parent, path.name, fetched.bytes, fetched.sha256, sha256)
            return fetched
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        shutil.copy(path, staging / path.name)
        return _settle(staging, path.name, fetched.bytes, fetched.sha256, sha256)
    scheme = urllib.parse.urlparse(uri).scheme
    trust = trust or Trust()
    if scheme in ("http", "https"):
        return _fetch_http(uri, staging, _Http(token, trust, tls_context(trust)), progress, sha256)
    if scheme == "s3":
        return _fetch_s3(uri, staging, s3 or S3Options(), trust, progress, sha256)
    raise SourceError("UnsupportedSource", f"{uri}: the source must be pvc://, a file path, http(s):// or s3://")
