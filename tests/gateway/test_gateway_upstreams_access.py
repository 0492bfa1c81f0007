"""https:// upstreams (a real TLS server on loopback, its CA made here) and upstream API keys."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.conftest import gateway
from gateway.helpers import body, post
from latlab.errors import ConfigError
from latlab.gateway.config import GatewayConfig
from latlab.gateway.keys import hash_key
from latlab.testing.stub_server import StubServer

_LEAF_EXTENSIONS = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throw-away CA and a server certificate for 127.0.0.1 it signed (P-256: fast)."""
    if shutil.which("openssl") is None:
        pytest.fail("the openssl command is missing: run scripts/setup_services.sh")
    work = tmp_path_factory.mktemp("tls")
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=latlab test CA", cwd=work)  # fmt: skip
    _openssl("req", *ec, "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=127.0.0.1",
             cwd=work)  # fmt: skip
    (work / "leaf.ext").write_text(_LEAF_EXTENSIONS)
    _openssl("x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "2", "-extfile", "leaf.ext", "-out", "leaf.pem",
             cwd=work)  # fmt: skip
    return work


@pytest.fixture(scope="module")
def tls_stub(certs: Path) -> Iterator[StubServer]:
    """An HTTPS upstream that also wants the gateway's own key."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs / "leaf.pem", certs / "leaf.key")
    server = StubServer(ttft_s=0.01, itl_s=0.002, tls=context, api_key="upstream-secret")
    server.start()
    yield server
    server.stop()


def test_https_upstream_verified_with_the_ca_bundle_and_its_own_key(tls_stub, certs, tmp_path):
    keys = tmp_path / "keys.toml"
    keys.write_text(f'[[keys]]\nsha256 = "{hash_key("client-key")}"\ntenant = "a"\n')
    with gateway(upstreams=[tls_stub.url], upstream_ca_bundle=str(certs / "ca.pem"),
                 upstream_keys={tls_stub.url: "upstream-secret"}, api_keys=str(keys)) as (
        url, gw,
    ):  # fmt: skip
        reply = post(url, body("over tls"), authorization="Bearer client-key")
        models = httpx.get(url + "/v1/models", headers={"authorization": "Bearer client-key"},
                           trust_env=False).json()  # fmt: skip
    assert reply.status == 200 and reply.events[-1] == b"data: [DONE]\n\n"
    assert reply.headers["x-latlab-upstream"].startswith("https://127.0.0.1:")
    assert [m["id"] for m in models["data"]] == ["stub-model"]  # health checks passed TLS + key
    assert gw.upstreams.all[0].healthy


def test_an_unknown_ca_is_refused_unless_verification_is_off(tls_stub, certs):
    with gateway(upstreams=[tls_stub.url], upstream_keys={"*": "upstream-secret"}) as (url, gw):
        refused = post(url, body("unverified"))
        reason = gw.upstreams.all[0].last_error
    assert refused.status in (502, 503)
    assert "CERTIFICATE_VERIFY_FAILED" in refused.json()["error"]["message"] + reason
    with gateway(upstreams=[tls_stub.url], upstream_verify=False,
                 upstream_keys={"*": "upstream-secret"}) as (url, _):  # fmt: skip
        assert post(url, body("unverified")).status == 200


def test_the_clients_key_is_never_sent_upstream(tls_stub, certs):
    # The client sends exactly the key the upstream wants; the gateway has none of its own, so
    # the upstream refuses, and the client is told the gateway's credentials failed (a 502).
    ca = str(certs / "ca.pem")
    with gateway(upstreams=[tls_stub.url], upstream_ca_bundle=ca, health_interval_s=60) as (
        url, gw,
    ):  # fmt: skip
        reply = post(url, body("whose key"), authorization="Bearer upstream-secret")
        health = gw.upstreams.all[0].last_error
    assert reply.status == 502
    assert reply.json()["error"]["code"] == "upstream_auth_failed"
    assert "--upstream-key-file" in reply.json()["error"]["message"]
    assert "refused the gateway's key" in health


@pytest.mark.parametrize("fields,match", [
    ({"upstream_keys": {"http://127.0.0.1:9/v1": "k"}}, "not an --upstream"),
    ({"upstream_keys": {"*": "two words"}}, "one line without spaces"),
    ({"upstream_ca_bundle": "/nonexistent/ca.pem", "upstreams": ["https://127.0.0.1:9"]},
     "cannot load"),
    ({"upstreams": ["ftp://127.0.0.1:9"]}, "http://HOST:PORT or https://"),
])  # fmt: skip
def test_bad_upstream_access_settings_say_what_is_wrong(fields, match):
    from latlab.gateway.app import Gateway

    fields.setdefault("upstreams", ["http://127.0.0.1:8"])
    with pytest.raises(ConfigError, match=match):
        Gateway(GatewayConfig(**fields))
