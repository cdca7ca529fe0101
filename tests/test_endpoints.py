"""Endpoints as users have them, on loopback only: HTTPS signed by a CA the test makes
(trusted through `verify`, SSL_CERT_FILE or REQUESTS_CA_BUNDLE, refused without), mutual TLS,
a forward proxy (CONNECT for https, absolute-form for http) from the config or the
environment, NO_PROXY, redirects and a redirect loop, and a name whose first address never
answers (Happy Eyeballs)."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import pytest
from forward_proxy import ForwardProxy

from pytest_servebench.engine.client import (
    FatalEndpointError,
    RequestFailed,
    RetryableError,
    list_models,
    send,
)
from pytest_servebench.engine.connection import Session, Settings
from pytest_servebench.testing.mockserver import MockServer

trustme = pytest.importorskip("trustme")

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")
CA_VARS = ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No proxy or CA variable from the machine leaks into a test."""
    for name in (*PROXY_VARS, *CA_VARS):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


class Pki:
    """A private CA, a server certificate for localhost and 127.0.0.1, and a client one."""

    def __init__(self, folder: Path) -> None:
        self.ca = trustme.CA()
        self.ca_file = folder / "company-ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.server_cert = self.ca.issue_cert("localhost", "127.0.0.1")
        self.client_file = folder / "client.pem"
        self.ca.issue_cert("client@example.test").private_key_and_cert_chain_pem.write_to_path(
            str(self.client_file)
        )

    def server_context(self, client_certs: bool = False) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server_cert.configure_cert(context)
        if client_certs:
            context.verify_mode = ssl.CERT_REQUIRED
            self.ca.configure_trust(context)
        return context


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


def client(**settings: Any) -> Session:
    return Session(Settings(**{"connect_timeout": 5.0, "read_timeout": 10.0, **settings}))


async def ask(session: Session, base_url: str, stream: bool = False) -> str:
    body = {**CHAT, "stream": stream}
    replies, _, _ = await send(session, base_url + "/chat/completions", body, True, stream, {})
    return replies[0].content


# --------------------------------------------------------------------------- TLS


@pytest.mark.asyncio
@pytest.mark.parametrize("stream", [False, True])
async def test_https_trusted_through_verify(pki, stream):
    with MockServer(lambda r: "secure", ssl=pki.server_context()) as srv:
        assert srv.base_url.startswith("https://127.0.0.1:")

        async def main() -> None:
            async with client(verify=str(pki.ca_file)) as session:
                for _ in range(3):
                    assert await ask(session, srv.base_url, stream) == "secure"
                localhost = srv.base_url.replace("127.0.0.1", "localhost")
                assert await ask(session, localhost, stream) == "secure"

        await main()
        assert srv.stats.connections_opened == 2  # one per origin, kept alive


@pytest.mark.asyncio
@pytest.mark.parametrize("variable", ["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "SSL_CERT_DIR"])
async def test_https_trusted_through_the_environment(pki, monkeypatch, tmp_path, variable):
    value = str(pki.ca_file)
    if variable == "SSL_CERT_DIR":  # a hashed folder, as c_rehash makes it
        folder = tmp_path / "certs"
        folder.mkdir()
        name = _subject_hash(pki.ca_file)
        (folder / f"{name}.0").write_bytes(pki.ca_file.read_bytes())
        value = str(folder)
    monkeypatch.setenv(variable, value)
    with MockServer(lambda r: "secure", ssl=pki.server_context()) as srv:

        async def main() -> None:
            async with client() as session:
                assert await ask(session, srv.base_url) == "secure"
                assert session.ca_source == f"{variable}={value}"
            async with client(trust_env=False) as session:  # the variables are ignored
                with pytest.raises(FatalEndpointError, match="not trusted"):
                    await ask(session, srv.base_url)

        await main()


def _subject_hash(pem: Path) -> str:
    import subprocess

    out = subprocess.run(
        ["openssl", "x509", "-hash", "-noout", "-in", str(pem)], capture_output=True, text=True
    )
    if out.returncode != 0:
        pytest.skip("no openssl to hash the CA folder")
    return out.stdout.strip()


@pytest.mark.asyncio
async def test_untrusted_certificate_is_one_clear_fatal_error(pki):
    with MockServer(lambda r: "secure", ssl=pki.server_context()) as srv:

        async def main() -> None:
            async with client(name="corp") as session:
                with pytest.raises(FatalEndpointError) as info:
                    await ask(session, srv.base_url)
                message = str(info.value)
                assert f"127.0.0.1:{srv.port}" in message
                assert "not trusted" in message
                assert "certifi's bundle and the system's trust store" in message
                assert "--sb-set corp.verify=" in message
                assert "http://" not in message
                # list_models (GET /models) says the same
                with pytest.raises(FatalEndpointError, match="not trusted"):
                    await list_models(session, srv.base_url, {})

        await main()
        assert srv.stats.completed == 0


@pytest.mark.asyncio
async def test_verify_false_skips_the_check_and_wrong_host_is_refused(pki):
    other = trustme.CA().issue_cert("elsewhere.test")  # another CA, another name
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    other.configure_cert(context)
    with MockServer(lambda r: "anyway", ssl=context) as srv:

        async def main() -> None:
            async with client(verify=False) as session:
                assert await ask(session, srv.base_url) == "anyway"
            async with client(verify=str(pki.ca_file)) as session:
                with pytest.raises(FatalEndpointError, match=r"company-ca\.pem"):
                    await ask(session, srv.base_url)

        await main()


@pytest.mark.asyncio
@pytest.mark.parametrize("answers", [True, False], ids=["answers-400", "silent"])
async def test_tls_to_a_plain_http_server_never_suggests_http(answers):
    """A server that speaks plain HTTP: most answer the TLS hello with an HTTP 400 (an SSL
    "wrong version number"); a silent one lets the handshake time out."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        if answers:
            writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
        else:
            await asyncio.sleep(3)
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            async with client(connect_timeout=1.0) as session:
                with pytest.raises((FatalEndpointError, RetryableError)) as info:
                    await ask(session, f"https://127.0.0.1:{port}/v1")
        finally:
            server.close()
        text = f"{info.value} {getattr(info.value, 'unreachable', '')}"
        assert "http://" not in text
        assert f"127.0.0.1:{port}" in text
        assert ("TLS" in text) if answers else ("TLS handshake" in text)

    await main()


@pytest.mark.asyncio
async def test_mutual_tls(pki):
    with MockServer(lambda r: "mutual", ssl=pki.server_context(client_certs=True)) as srv:

        async def main() -> None:
            async with client(verify=str(pki.ca_file), cert=str(pki.client_file)) as session:
                assert await ask(session, srv.base_url) == "mutual"
                assert await ask(session, srv.base_url, stream=True) == "mutual"
            async with client(verify=str(pki.ca_file)) as session:  # no client certificate
                with pytest.raises((FatalEndpointError, RetryableError)) as info:
                    await ask(session, srv.base_url)
            # TLS 1.3: the server closes after the handshake; the message that stops a run
            # that never got an answer says what to set
            text = f"{info.value} {getattr(info.value, 'unreachable', '')}"
            assert "http://" not in text
            assert "--sb-set model.cert=" in text

        await main()
        assert srv.stats.completed == 2


# --------------------------------------------------------------------------- proxies


@pytest.mark.asyncio
@pytest.mark.parametrize("stream", [False, True])
async def test_https_through_a_proxy_from_the_environment(pki, monkeypatch, stream):
    with (
        MockServer(lambda r: "tunnelled", ssl=pki.server_context()) as srv,
        ForwardProxy() as proxy,
    ):
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca_file))

        async def main() -> None:
            async with client() as session:
                for _ in range(3):
                    assert await ask(session, srv.base_url, stream) == "tunnelled"

        await main()
        assert proxy.tunnels == [f"127.0.0.1:{srv.port}"]  # one tunnel, kept alive
        assert srv.stats.completed == 3


@pytest.mark.asyncio
async def test_http_through_a_proxy_in_absolute_form_and_all_proxy(monkeypatch):
    with MockServer(lambda r: "forwarded") as srv, ForwardProxy() as proxy:
        monkeypatch.setenv("ALL_PROXY", proxy.url)

        async def main() -> None:
            async with client() as session:
                assert await ask(session, srv.base_url) == "forwarded"
                assert await ask(session, srv.base_url, stream=True) == "forwarded"
                assert await list_models(session, srv.base_url, {}) == ["mock-model"]

        await main()
        assert proxy.forwarded == [
            srv.base_url + "/chat/completions",
            srv.base_url + "/chat/completions",
            srv.base_url + "/models",
        ]
        assert proxy.tunnels == []


@pytest.mark.asyncio
async def test_proxy_field_wins_and_no_proxy_bypasses_the_environment_proxy(pki, monkeypatch):
    with (
        MockServer(lambda r: "ok", ssl=pki.server_context()) as srv,
        ForwardProxy() as env_proxy,
        ForwardProxy() as field_proxy,
    ):
        monkeypatch.setenv("HTTPS_PROXY", env_proxy.url)

        async def main() -> None:
            async with client(verify=str(pki.ca_file), proxy=field_proxy.url) as session:
                assert await ask(session, srv.base_url) == "ok"
            assert field_proxy.tunnels and not env_proxy.tunnels
            monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
            async with client(verify=str(pki.ca_file)) as session:
                assert await ask(session, srv.base_url) == "ok"
            assert not env_proxy.tunnels  # direct
            monkeypatch.setenv("NO_PROXY", "example.test")
            async with client(verify=str(pki.ca_file)) as session:
                assert await ask(session, srv.base_url) == "ok"
            assert env_proxy.tunnels == [f"127.0.0.1:{srv.port}"]
            async with client(verify=str(pki.ca_file), trust_env=False) as session:
                assert await ask(session, srv.base_url) == "ok"
            assert len(env_proxy.tunnels) == 1  # trust_env false: no proxy variable read

        await main()


@pytest.mark.asyncio
async def test_proxy_credentials_are_sent_and_never_shown(pki):
    with (
        MockServer(lambda r: "ok", ssl=pki.server_context()) as srv,
        ForwardProxy(credentials="alice:s3cret-pw") as proxy,
    ):

        async def main() -> None:
            async with client(verify=str(pki.ca_file), proxy=proxy.url) as session:
                assert await ask(session, srv.base_url) == "ok"
            wrong = proxy.url.replace("s3cret-pw", "wrong-pw")
            async with client(verify=str(pki.ca_file), proxy=wrong) as session:
                with pytest.raises(FatalEndpointError) as info:
                    await ask(session, srv.base_url)
            message = str(info.value)
            assert "407" in message
            assert f"http://***@127.0.0.1:{proxy.port}" in message
            assert "wrong-pw" not in message and "alice" not in message

        await main()
        assert proxy.rejected == 1


@pytest.mark.asyncio
async def test_unreachable_proxy_is_named_redacted():
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]  # closed when the test runs: nothing listens

    async def main() -> None:
        proxy = f"http://bob:hunter22@127.0.0.1:{port}"
        async with client(proxy=proxy, name="corp") as session:
            with pytest.raises(RetryableError) as info:
                await ask(session, "http://127.0.0.1:9/v1")
        text = f"{info.value} | {info.value.unreachable}"
        assert f"proxy http://***@127.0.0.1:{port}" in text
        assert "hunter22" not in text and "bob" not in text
        assert "--sb-set corp.proxy=" in (info.value.unreachable or "")
        assert "base_url" not in (info.value.unreachable or "")

    await main()


@pytest.mark.asyncio
async def test_socks_proxy_from_the_environment_is_refused_clearly(monkeypatch):
    monkeypatch.setenv("ALL_PROXY", "socks5://user:pw1234@127.0.0.1:1080")

    async def main() -> None:
        async with client() as session:
            with pytest.raises(FatalEndpointError) as info:
                await ask(session, "http://127.0.0.1:9/v1")
        assert "ALL_PROXY" in str(info.value)
        assert "SOCKS proxies are not supported" in str(info.value)
        assert "pw1234" not in str(info.value)

    await main()


def test_proxy_choice_by_scheme_all_proxy_and_no_proxy(monkeypatch):
    from pytest_servebench.engine.connection import EndpointSetupError, Proxies

    monkeypatch.setenv("ALL_PROXY", "socks5://127.0.0.1:1080")
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:3128")
    monkeypatch.setenv("NO_PROXY", ".internal.test,10.1.2.3:8000")
    proxies = Proxies(None, trust_env=True)
    assert proxies.for_url("https", "llm.example.test", 443) == "http://127.0.0.1:3128"
    assert proxies.for_url("https", "llm.internal.test", 443) is None
    assert proxies.for_url("http", "10.1.2.3", 8000) is None
    with pytest.raises(EndpointSetupError, match="ALL_PROXY"):  # only when it is the one used
        proxies.for_url("http", "llm.example.test", 80)
    assert Proxies(None, trust_env=False).for_url("https", "llm.example.test", 443) is None
    explicit = Proxies("http://127.0.0.1:9999", trust_env=True)
    assert explicit.for_url("https", "llm.internal.test", 443) == "http://127.0.0.1:9999"


# --------------------------------------------------------------------------- redirects


class Redirector:
    """A loopback server: /v1/... answers `status` to /v2/... (or to itself: a loop), /v2/...
    is served by the mock server behind it. Records each request line and body."""

    def __init__(self, upstream: str, status: int, loop: bool = False, hops: int = 1) -> None:
        self.upstream = upstream
        self.status = status
        self.loop = loop
        self.hops = hops
        self.seen: list[tuple[str, bytes, bytes]] = []  # (request line, body, head)

    async def __aenter__(self) -> Redirector:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = await reader.readexactly(length) if length else b""
                line = head.split(b"\r\n")[0].decode()
                self.seen.append((line, body, head))
                path = line.split(" ")[1]
                hop = sum(1 for seen, _, _ in self.seen if seen == line)
                if self.loop:
                    location = path
                elif hop < self.hops and "/hop/" not in path:
                    location = path.replace("/v1/", "/v1/hop/")
                else:
                    location = self.upstream + path.replace("/v1/hop/", "/v1/").removeprefix("/v1")
                writer.write(
                    f"HTTP/1.1 {self.status} Moved\r\nLocation: {location}\r\n"
                    f"Content-Length: 0\r\n\r\n".encode()
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("status", [307, 308])
@pytest.mark.parametrize("stream", [False, True])
async def test_307_308_chains_keep_method_and_body(status, stream):
    seen_bodies: list[dict] = []

    def responder(r) -> str:
        seen_bodies.append(r.body)
        return "moved on"

    with MockServer(responder) as srv:

        async def main() -> list:
            async with Redirector(srv.base_url, status, hops=2) as hop, client() as session:
                body = {**CHAT, "stream": stream, "seed": 7}
                replies, _, _ = await send(
                    session, hop.url + "/v1/chat/completions", body, True, stream, {}
                )
                assert replies[0].content == "moved on"
                return hop.seen

        seen = await main()
    assert [line for line, _, _ in seen] == [
        "POST /v1/chat/completions HTTP/1.1",
        "POST /v1/hop/chat/completions HTTP/1.1",
    ]
    assert seen[0][1] == seen[1][1]  # the body went along
    assert seen_bodies[0]["seed"] == 7 and seen_bodies[0]["stream"] is stream
    assert srv.stats.completed == 1


@pytest.mark.asyncio
async def test_redirect_from_http_to_https_uses_the_verify_setting(pki):
    with MockServer(lambda r: "upgraded", ssl=pki.server_context()) as srv:

        async def main() -> None:
            async with (
                Redirector(srv.base_url, 308) as hop,
                client(verify=str(pki.ca_file)) as session,
            ):
                assert await ask(session, hop.url + "/v1") == "upgraded"

        await main()
        assert srv.stats.completed == 1


@pytest.mark.asyncio
async def test_redirect_to_another_origin_drops_the_authorization_header():
    async def main() -> None:
        async with Redirector("", 200) as target:  # records heads (its 200 has no body)
            async with Redirector(target.url + "/v1", 307) as hop, client() as session:
                headers = {"Authorization": "Bearer sk-secret"}
                with pytest.raises(RetryableError, match="malformed"):
                    await send(
                        session, hop.url + "/v1/chat/completions", CHAT, True, False, headers
                    )
            assert b"sk-secret" in hop.seen[0][2]
            assert target.seen[0][0] == "POST /v1/chat/completions HTTP/1.1"
            assert b"sk-secret" not in target.seen[0][2]
            assert target.seen[0][1] == hop.seen[0][1]

    await main()


@pytest.mark.asyncio
async def test_redirect_loop_is_capped_and_reported():
    async def main() -> None:
        async with Redirector("", 307, loop=True) as hop, client() as session:
            with pytest.raises(FatalEndpointError) as info:
                await send(session, hop.url + "/v1/chat/completions", CHAT, True, False, {})
            assert "redirect loop" in str(info.value)
            assert len(hop.seen) == 10  # capped

    await main()


@pytest.mark.asyncio
async def test_follow_redirects_false_reports_where_it_points():
    async def main() -> None:
        async with Redirector("http://127.0.0.1:1/v1", 308) as hop:
            async with client(follow_redirects=False) as session:
                with pytest.raises(RequestFailed) as info:
                    await send(session, hop.url + "/v1/chat/completions", CHAT, True, False, {})
            assert "HTTP 308" in str(info.value)
            assert "redirects to http://127.0.0.1:1/v1/chat/completions" in str(info.value)
            assert len(hop.seen) == 1

    await main()


@pytest.mark.asyncio
async def test_303_turns_into_a_get_as_the_status_says():
    async def main() -> None:
        async with Redirector("", 303) as first:
            target = Redirector("", 200)
            async with target:
                first.upstream = target.url + "/v1"
                async with client() as session:
                    with pytest.raises((RequestFailed, RetryableError)):
                        await send(
                            session, first.url + "/v1/chat/completions", CHAT, True, False, {}
                        )
            assert target.seen[0][0] == "GET /v1/chat/completions HTTP/1.1"
            assert target.seen[0][1] == b""

    await main()


# --------------------------------------------------------------------------- addresses


@pytest.fixture
def blackholed_first(monkeypatch):
    """A name, dual.test, whose first address (127.0.0.2) has a listening socket with a full
    backlog that never accepts (a SYN gets no answer), and whose second (127.0.0.1) serves
    the mock. Resolved by a stub in place of getaddrinfo: nothing leaves loopback."""
    srv = MockServer(lambda r: "second address").start()
    hole = socket.socket()
    fillers: list[socket.socket] = []
    try:
        hole.bind(("127.0.0.2", srv.port))
        hole.listen(0)
        for _ in range(8):  # fill the accept queue
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.2", srv.port))
            fillers.append(filler)
        probe = socket.create_connection
        with pytest.raises(OSError):  # the precondition: a connect that hangs
            probe(("127.0.0.2", srv.port), timeout=0.3).close()
        real = socket.getaddrinfo
        asked: list[str] = []

        def stub(host, port, *args, **kwargs):
            if host == "dual.test":
                asked.append(host)
                return [
                    (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.2", int(port))),
                    (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", int(port))),
                ]
            return real(host, port, *args, **kwargs)

        monkeypatch.setattr(socket, "getaddrinfo", stub)
        yield srv, asked
    finally:
        for filler in fillers:
            filler.close()
        hole.close()
        srv.stop()


@pytest.mark.asyncio
async def test_happy_eyeballs_falls_back_quickly_from_a_blackholed_address(blackholed_first):
    srv, asked = blackholed_first

    async def main() -> float:
        async with client(connect_timeout=5.0) as session:
            start = time.perf_counter()
            assert await ask(session, f"http://dual.test:{srv.port}/v1") == "second address"
            return time.perf_counter() - start

    took = await main()
    assert asked  # the stub resolved the name
    assert took < 2.0  # ~0.25 s, not the 5 s connect timeout


@pytest.mark.asyncio
async def test_connect_timeout_applies_per_attempt(blackholed_first, monkeypatch):
    srv, _ = blackholed_first

    async def main() -> float:
        async with client(connect_timeout=0.5) as session:
            start = time.perf_counter()
            with pytest.raises(RetryableError, match="ConnectTimeout"):
                await ask(session, f"http://127.0.0.2:{srv.port}/v1")
            return time.perf_counter() - start

    took = await main()
    assert 0.4 < took < 3.0


# --------------------------------------------------------------------------- config fields


def test_model_config_fields_reach_the_session(pki):
    from pytest_servebench.catalog.config import ModelConfig, build

    raw = {
        "verify": str(pki.ca_file),
        "cert": [str(pki.client_file)],
        "proxy": "http://u:pw12@proxy.test:3128",
        "trust_env": False,
        "follow_redirects": False,
        "max_concurrency": 3,
    }
    config = build(ModelConfig, "corp", "corp.yaml", raw)
    assert Settings.of(config) == Settings(
        name="corp",
        max_connections=3,
        verify=str(pki.ca_file),
        cert=[str(pki.client_file)],
        proxy="http://u:pw12@proxy.test:3128",
        trust_env=False,
        follow_redirects=False,
    )
    defaults = build(ModelConfig, "plain", "plain.yaml", {})
    assert (defaults.verify, defaults.cert, defaults.proxy) == (True, None, None)
    assert defaults.trust_env and defaults.follow_redirects


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"verify": "/no/such/ca.pem"}, "verify: no CA bundle at /no/such/ca.pem (set it in the model config or with --sb-set corp.verify=...)"),
        ({"verify": 3}, "field 'verify' must be true/false or a string"),
        ({"cert": "/no/client.pem"}, "cert: no file at /no/client.pem"),
        ({"cert": ["a", "b", "c"]}, "cert: must be a PEM file with the certificate and key, or [CERT, KEY]"),
        ({"proxy": "socks5://h:1080"}, "proxy: socks5://h:1080 is not a supported proxy"),
        ({"proxy": "http://u:secret99@:99999"}, "proxy: http://***@:99999 is not a URL"),
        ({"trust_env": "yes"}, "field 'trust_env' must be true/false"),
        ({"follow_redirect": True}, "did you mean follow_redirects"),
    ],
)  # fmt: skip
def test_model_config_field_errors_say_what_to_do(raw, message):
    from pytest_servebench.catalog.config import ModelConfig, build
    from pytest_servebench.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        build(ModelConfig, "corp", "corp.yaml", raw)
    assert message in str(info.value)
    assert "secret99" not in str(info.value)


def test_snapshot_scrub_hides_proxy_credentials():
    from pytest_servebench.redaction import redactor

    scrubbed = redactor.scrub({"proxy": "http://alice:pa55word@proxy.test:3128", "n": "a@b"})
    assert scrubbed == {"proxy": "http://***@proxy.test:3128", "n": "a@b"}
