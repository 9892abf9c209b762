"""Who may read the endpoint: basic auth and/or a bearer token (compared in constant time), the
credential files they come from, and the TLS context. Read at start, before the daemon drops
privileges."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import ssl
import stat

from sensor.metrics.settings import MetricsConfig, MetricsError


def read_secret(path: str, what: str) -> bytes:
    """A credential file: ours or root's, not readable by group or others; stripped."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise MetricsError(f"metrics: {what} {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise MetricsError(f"metrics: {what} {path}: not a regular file")
        if st.st_mode & 0o077:
            raise MetricsError(
                f"metrics: {what} {path}: readable by others (mode {st.st_mode & 0o777:o}); "
                "chmod 600 it"
            )
        data = fh.read(4096).strip()
    if not data:
        raise MetricsError(f"metrics: {what} {path}: empty")
    return data


class Auth:
    """Accepts a request when no credentials are configured, or when it carries one of the
    configured ones (basic auth or bearer token). Comparisons are constant-time."""

    def __init__(
        self, user: bytes | None, password_sha256: bytes | None, token_sha256: bytes | None
    ) -> None:
        self.user = user
        self.password_sha256 = password_sha256
        self.token_sha256 = token_sha256

    @classmethod
    def from_config(cls, cfg: MetricsConfig) -> Auth:
        user = pw = token = None
        if cfg.basic_auth_user is not None:
            user = cfg.basic_auth_user.encode()
            if cfg.basic_auth_password_sha256 is not None:
                pw = bytes.fromhex(cfg.basic_auth_password_sha256)
            elif cfg.basic_auth_password_file is not None:
                secret = read_secret(cfg.basic_auth_password_file, "basic_auth_password_file")
                pw = hashlib.sha256(secret).digest()
        if cfg.bearer_token_file is not None:
            secret = read_secret(cfg.bearer_token_file, "bearer_token_file")
            token = hashlib.sha256(secret).digest()
        return cls(user, pw, token)

    def __bool__(self) -> bool:
        return self.user is not None or self.token_sha256 is not None

    @property
    def schemes(self) -> str:
        return "Basic" if self.user is not None else "Bearer"

    def check(self, header: str | None) -> bool:
        if not self:
            return True
        if not header:
            return False
        scheme, _, cred = header.strip().partition(" ")
        scheme = scheme.lower()
        cred = cred.strip()
        if scheme == "bearer" and self.token_sha256 is not None:
            got = hashlib.sha256(cred.encode("utf-8", "surrogateescape")).digest()
            return hmac.compare_digest(got, self.token_sha256)
        if scheme == "basic" and self.user is not None and self.password_sha256 is not None:
            try:
                raw = base64.b64decode(cred, validate=True)
            except ValueError:
                return False
            user, sep, pw = raw.partition(b":")
            if not sep:
                return False
            user_ok = hmac.compare_digest(
                hashlib.sha256(user).digest(), hashlib.sha256(self.user).digest()
            )
            pw_ok = hmac.compare_digest(hashlib.sha256(pw).digest(), self.password_sha256)
            return user_ok and pw_ok
        return False


def tls_context(cfg: MetricsConfig) -> ssl.SSLContext | None:
    if cfg.tls_cert_file is None or cfg.tls_key_file is None:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cfg.tls_cert_file, cfg.tls_key_file)
    except (OSError, ssl.SSLError) as exc:
        raise MetricsError(f"metrics: cannot load the TLS certificate or key: {exc}") from None
    return ctx
