"""Whole runs against endpoints as users have them (loopback only): HTTPS with a private CA
trusted through `--sb-set NAME.verify` or SSL_CERT_FILE, the same through a forward proxy
set in HTTPS_PROXY, a proxy with credentials that appear in no file, a 307 hop, and an
untrusted certificate that stops the run with one message."""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from forward_proxy import ForwardProxy

from conftest import completion_requests
from pytest_servebench.testing.mockserver import MockServer, dataset_responder

trustme = pytest.importorskip("trustme")
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

CASES = 12


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "SSL_CERT_FILE"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    for name in ("SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def ca_file(tmp_path: Path) -> Iterator[tuple[Path, ssl.SSLContext]]:
    ca = trustme.CA()
    path = tmp_path / "company-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
    yield path, context


@pytest.fixture
def https_server(demo_records, ca_file) -> Iterator[MockServer]:
    _, context = ca_file
    responder = dataset_responder(demo_records, p_correct=0.6, seed=1)
    with MockServer(responder, ssl=context) as server:
        yield server


def args(url: str, *extra: str) -> list[str]:
    return [
        *("--sb-models", "vllm_chat", "--sb-datasets", "demo_gsm8k"),
        *("--sb-set", f"vllm_chat.base_url={url}", "--sb-limit", str(CASES)),
        *("--sb-work-dir", "out", "-p", "no:cacheprovider"),
        *extra,
    ]


def assert_all_answered(result: pytest.RunResult) -> None:
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) + outcomes.get("failed", 0) == CASES, outcomes
    assert "error" not in outcomes and "errors" not in outcomes


def snapshot(root: Path) -> dict:
    (path,) = root.glob("out/*/configs/run_*.json")
    return json.loads(path.read_text())


def test_https_with_a_private_ca_through_verify(pytester, https_server, ca_file):
    ca, _ = ca_file
    result = pytester.runpytest_subprocess(
        *args(https_server.base_url, "--sb-set", f"vllm_chat.verify={ca}")
    )
    assert_all_answered(result)
    assert completion_requests(https_server) == CASES
    model = snapshot(pytester.path)["models"]["vllm_chat"]
    assert model["verify"] == str(ca)
    assert model["trust_env"] is True and model["follow_redirects"] is True


def test_https_through_ssl_cert_file_and_a_proxy_in_https_proxy(
    pytester, https_server, ca_file, monkeypatch
):
    ca, _ = ca_file
    with ForwardProxy() as proxy:
        monkeypatch.setenv("SSL_CERT_FILE", str(ca))
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        result = pytester.runpytest_subprocess(*args(https_server.base_url))
    assert_all_answered(result)
    assert proxy.tunnels and set(proxy.tunnels) == {f"127.0.0.1:{https_server.port}"}
    assert completion_requests(https_server) == CASES


def test_proxy_credentials_appear_in_no_file(pytester, https_server, ca_file):
    ca, _ = ca_file
    with ForwardProxy(credentials="alice:pa55-w0rd") as proxy:
        result = pytester.runpytest_subprocess(
            *args(
                https_server.base_url,
                *("--sb-set", f"vllm_chat.verify={ca}", "--sb-set", f"vllm_chat.proxy={proxy.url}"),
            )
        )
    assert_all_answered(result)
    assert proxy.tunnels
    model = snapshot(pytester.path)["models"]["vllm_chat"]
    assert model["proxy"] == f"http://***@127.0.0.1:{proxy.port}"
    assert "pa55-w0rd" not in result.stdout.str() + result.stderr.str()
    for path in (pytester.path / "out").rglob("*"):
        if path.is_file():
            assert b"pa55-w0rd" not in path.read_bytes(), path


def test_untrusted_certificate_stops_the_run_with_one_message(pytester, https_server):
    result = pytester.runpytest_subprocess(*args(https_server.base_url))
    out = result.stdout.str() + result.stderr.str()
    assert result.ret != 0
    assert f"TLS certificate of 127.0.0.1:{https_server.port} is not trusted" in out
    assert "--sb-set vllm_chat.verify=" in out
    assert "Set its URL" not in out and "http://HOST" not in out
    assert out.count("is not trusted") <= 3  # one message, not one per case
    assert result.parseoutcomes().get("errors", 0) == 1
    assert completion_requests(https_server) == 0


def test_unreachable_proxy_stops_the_run_naming_it_redacted(pytester, gsm8k_server):
    proxy = "http://bob:hunter2pw@127.0.0.1:9"
    result = pytester.runpytest_subprocess(
        *args(gsm8k_server.base_url, "--sb-set", f"vllm_chat.proxy={proxy}")
    )
    out = result.stdout.str() + result.stderr.str()
    assert result.ret != 0
    assert "cannot connect to the proxy http://***@127.0.0.1:9" in out
    assert "hunter2pw" not in out
    assert "--sb-set vllm_chat.proxy=" in out
    assert result.parseoutcomes().get("errors", 0) == 1
    assert completion_requests(gsm8k_server) == 0


class _Redirect(BaseHTTPRequestHandler):
    target = ""
    seen: list[str] = []  # noqa: RUF012  (set per server)

    def _answer(self) -> None:
        self.seen.append(f"{self.command} {self.path}")
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self.send_response(307)
        self.send_header("Location", self.target + self.path.removeprefix("/v1"))
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


def test_a_307_hop_in_front_of_the_server(pytester, gsm8k_server):
    handler = type("Hop", (_Redirect,), {"target": gsm8k_server.base_url, "seen": []})
    hop = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=hop.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{hop.server_address[1]}/v1"
        result = pytester.runpytest_subprocess(*args(url))
    finally:
        hop.shutdown()
    assert_all_answered(result)
    assert completion_requests(gsm8k_server) == CASES
    assert handler.seen.count("POST /v1/chat/completions") == CASES


def test_mutual_tls_run_and_the_message_without_a_client_certificate(
    pytester, demo_records, tmp_path
):
    ca = trustme.CA()
    ca_path, client_path = tmp_path / "ca.pem", tmp_path / "client.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    ca.issue_cert("me@example.test").private_key_and_cert_chain_pem.write_to_path(str(client_path))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    context.verify_mode = ssl.CERT_REQUIRED
    ca.configure_trust(context)
    responder = dataset_responder(demo_records, p_correct=0.6, seed=1)
    with MockServer(responder, ssl=context) as server:
        verify = ("--sb-set", f"vllm_chat.verify={ca_path}")
        refused = pytester.runpytest_subprocess(*args(server.base_url, *verify))
        served = pytester.runpytest_subprocess(
            *args(server.base_url, *verify, "--sb-set", f"vllm_chat.cert={client_path}"),
            "--sb-work-dir",
            "out2",
        )
    out = refused.stdout.str() + refused.stderr.str()
    assert refused.ret != 0
    assert "--sb-set vllm_chat.cert=" in out
    assert refused.parseoutcomes().get("errors", 0) == 1
    assert_all_answered(served)
