"""How requests reach an endpoint: TLS trust, client certificates, proxies, redirects and
timeouts, on one aiohttp session per model config; and what to tell the user when they fail.

aiohttp carries the bytes: a keep-alive pool whose cost per request does not grow with its
size (httpx's pool served ~50 req/s at C=256, 200 ms), Happy Eyeballs (RFC 8305) across a
name's addresses, CONNECT tunnels for https through a proxy, redirects with a cap, gzip and
chunked replies. Proxies from the environment are chosen here (once per origin), not by
aiohttp: its `trust_env` looks them up in a thread for every request and ignores ALL_PROXY.
"""

from __future__ import annotations

import functools
import os
import ssl
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_servebench.catalog.config import proxy_url_problem

if TYPE_CHECKING:
    import aiohttp

    from pytest_servebench.catalog.config import ModelConfig

HAPPY_EYEBALLS_DELAY = 0.25  # seconds before the next address is tried (RFC 8305's default)
MAX_REDIRECTS = 10
KEEPALIVE_EXPIRY = 5.0  # seconds an idle connection is kept
# Variables that name a CA bundle, in the order httpx (SSL_CERT_*) and requests read them.
CA_ENV = ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")


class EndpointSetupError(Exception):
    """The TLS or proxy settings cannot be used (a missing CA file, an unsupported proxy)."""


def _check_path(path: str, what: str) -> Path:
    resolved = Path(path).expanduser()
    if not resolved.exists():
        raise EndpointSetupError(f"{what}: {path}: no such file or folder")
    return resolved


def tls_context(
    verify: bool | str, cert: str | list[str] | None, trust_env: bool, name: str
) -> tuple[ssl.SSLContext, str]:
    """The SSL context for https, and a description of the CA certificates it trusts.

    verify false: no checks; a path: that CA bundle (file) or hashed folder; true: with
    `trust_env`, SSL_CERT_FILE / SSL_CERT_DIR / REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE when set,
    else certifi's bundle (httpx's default) and the system's trust store. `name`: the model
    config's, for messages."""
    try:
        if verify is False:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            source = f"none ({name}.verify is false: certificates are not checked)"
        elif isinstance(verify, str):
            context = _trusting(_check_path(verify, f"{name}.verify"))
            source = f"{verify} ({name}.verify)"
        else:
            env = {name: os.environ[name] for name in CA_ENV if trust_env and os.environ.get(name)}
            if env:
                chosen = dict(list(env.items())[:1])
                if "SSL_CERT_FILE" in env and "SSL_CERT_DIR" in env:
                    chosen = {k: env[k] for k in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
                context = _trusting(
                    *(_check_path(v, f"environment variable {k}") for k, v in chosen.items())
                )
                source = " and ".join(f"{k}={v}" for k, v in chosen.items())
            else:
                import certifi

                context = ssl.create_default_context(cafile=certifi.where())
                # The system's store at OpenSSL's own paths: load_default_certs would read
                # SSL_CERT_FILE / SSL_CERT_DIR even with trust_env false.
                system = ssl.get_default_verify_paths()
                if system.openssl_cafile and os.path.isfile(system.openssl_cafile):
                    context.load_verify_locations(cafile=system.openssl_cafile)
                if system.openssl_capath and os.path.isdir(system.openssl_capath):
                    context.load_verify_locations(capath=system.openssl_capath)
                source = "certifi's bundle and the system's trust store"
        context.set_alpn_protocols(["http/1.1"])
        if cert:
            files = [cert] if isinstance(cert, str) else list(cert)
            paths = [_check_path(f, f"{name}.cert") for f in files]
            # password: never a prompt on the terminal for an encrypted key, an error instead
            context.load_cert_chain(
                str(paths[0]), str(paths[1]) if len(paths) > 1 else None, password=_no_password
            )
    except ssl.SSLError as exc:
        raise EndpointSetupError(f"cannot load the TLS settings of {name}: {exc}") from None
    return context, source


def _no_password() -> str:
    raise EndpointSetupError(
        "the client certificate's key is encrypted; give `cert` a key without a passphrase"
    )


def _trusting(*paths: Path) -> ssl.SSLContext:
    """A context that trusts only the CA certificates in `paths` (PEM files or hashed
    folders, as `c_rehash` makes them); hostnames and certificates are checked."""
    files = [str(p) for p in paths if not p.is_dir()]
    folders = [str(p) for p in paths if p.is_dir()]
    context = ssl.create_default_context(
        cafile=files[0] if files else None, capath=folders[0] if folders else None
    )
    return context


class Proxies:
    """Which proxy a URL goes through: the config's `proxy` for every URL, else (with
    `trust_env`) HTTP_PROXY / HTTPS_PROXY / ALL_PROXY unless NO_PROXY names the host."""

    def __init__(self, proxy: str | None, trust_env: bool) -> None:
        self.explicit = proxy or None
        if self.explicit:
            check_proxy_url(self.explicit, "proxy")
        self.env = environment_proxies() if self.explicit is None and trust_env else {}
        self._cache: dict[tuple[str, str], str | None] = {}

    def for_url(self, scheme: str, host: str, port: int | None) -> str | None:
        """The proxy URL, or None (direct). EndpointSetupError when the environment names
        a proxy aiohttp cannot use (SOCKS)."""
        key = (scheme, f"{host}:{port}" if port else host)
        if key not in self._cache:
            self._cache[key] = self._choose(scheme, host, port)
        return self._cache[key]

    def _choose(self, scheme: str, host: str, port: int | None) -> str | None:
        if self.explicit:
            return self.explicit
        variable = scheme if self.env.get(scheme) else "all"
        proxy = self.env.get(variable)
        if not proxy:
            return None
        if "no" in self.env:
            target = f"{host}:{port}" if port else host
            if urllib.request.proxy_bypass_environment(target, self.env):
                return None
        check_proxy_url(proxy, f"environment variable {variable.upper()}_PROXY")
        return proxy


def environment_proxies() -> dict[str, str]:
    """HTTP_PROXY, HTTPS_PROXY, ALL_PROXY, NO_PROXY (any case) as {"http": ..., "no": ...}."""
    return {k: v for k, v in urllib.request.getproxies_environment().items() if v}


def check_proxy_url(url: str, where: str) -> None:
    """A proxy URL aiohttp can use: http:// or https://, with a host."""
    problem = proxy_url_problem(url)
    if problem:
        raise EndpointSetupError(f"{where}: {problem}")


@dataclass(frozen=True)
class Settings:
    """What a session needs from a model config (see ModelConfig's fields of these names)."""

    name: str = "model"
    max_connections: int = 64
    connect_timeout: float | None = 10.0
    read_timeout: float | None = 600.0
    verify: bool | str = True
    cert: str | list[str] | None = None
    proxy: str | None = None
    trust_env: bool = True
    follow_redirects: bool = True

    @classmethod
    def of(cls, config: ModelConfig) -> Settings:
        return cls(
            name=config.name,
            max_connections=config.max_concurrency,
            connect_timeout=config.connect_timeout,
            read_timeout=config.read_timeout,
            verify=config.verify,
            cert=config.cert,
            proxy=config.proxy,
            trust_env=config.trust_env,
            follow_redirects=config.follow_redirects,
        )


class Session:
    """One endpoint's HTTP client: an aiohttp session made on first use (inside the event
    loop that uses it), with the TLS context and proxy choice of `settings`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._session: aiohttp.ClientSession | None = None
        self._ssl: ssl.SSLContext | None = None
        self.ca_source = ""
        self._setup_error: EndpointSetupError | None = None
        try:
            self.proxies = Proxies(settings.proxy, settings.trust_env)
        except EndpointSetupError as exc:  # reported by the first request, as other failures
            self.proxies = Proxies(None, False)
            self._setup_error = exc
        self._request_kwargs: dict[str, Any] = {
            "allow_redirects": settings.follow_redirects,
            "max_redirects": MAX_REDIRECTS,
        }
        self.closed = False

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = self._open()
        return self._session

    def _open(self) -> aiohttp.ClientSession:
        import aiohttp

        if self.closed:
            raise RuntimeError("the session is closed")
        if self._setup_error is not None:
            raise self._setup_error
        s = self.settings
        # Made even for an http:// base_url: a redirect to https must use the same trust.
        self._ssl, self.ca_source = tls_context(s.verify, s.cert, s.trust_env, s.name)
        connector = aiohttp.TCPConnector(
            limit=s.max_connections,
            limit_per_host=0,
            ssl=self._ssl,
            happy_eyeballs_delay=HAPPY_EYEBALLS_DELAY,
            keepalive_timeout=KEEPALIVE_EXPIRY,
        )
        timeout = aiohttp.ClientTimeout(
            total=None, connect=None, sock_connect=s.connect_timeout, sock_read=s.read_timeout
        )
        return aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            trust_env=False,  # proxies: see Proxies; .netrc is not read
            cookie_jar=aiohttp.CookieJar(unsafe=True),  # cookies from IP-address hosts too
            auto_decompress=True,
            raise_for_status=False,
        )

    def proxy_for(self, url: str) -> str | None:
        """The proxy requests to `url` go through (None: direct)."""
        parsed = parse_url(url)
        return self.proxies.for_url(parsed.scheme, parsed.host or "", parsed.explicit_port)

    def request(self, method: str, url: str, **kwargs: Any) -> Any:
        """aiohttp's request context manager, with this endpoint's proxy and redirects."""
        session = self.session
        return session.request(
            method, parse_url(url), proxy=self.proxy_for(url), **self._request_kwargs, **kwargs
        )

    async def aclose(self) -> None:
        self.closed = True
        if self._session is not None:
            await self._session.close()

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


@functools.lru_cache(maxsize=256)
def parse_url(url: str) -> Any:
    """The yarl URL of `url` (endpoints reuse a few URLs; parsing each time costs)."""
    from yarl import URL

    return URL(url)
