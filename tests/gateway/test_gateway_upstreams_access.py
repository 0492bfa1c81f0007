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


def _leaf(work: Path, name: str, usage: str, ca: str = "ca") -> None:
    """``name``.pem/.key: a P-256 certificate for ``usage`` (serverAuth, clientAuth) by ``ca``."""
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
    _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj",
             f"/CN=latlab {name}", cwd=work)  # fmt: skip
    (work / f"{name}.ext").write_text(_LEAF_EXTENSIONS.replace("serverAuth", usage))
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem",
             cwd=work)  # fmt: skip


@pytest.fixture(scope="module")
def client_certs(certs: Path) -> Path:
    """The gateway's client certificate from the test CA, and one from a CA nobody trusts."""
    _leaf(certs, "client", "clientAuth")
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", "other-ca.key", "-out", "other-ca.pem", "-days", "2", "-subj",
             "/CN=another CA", cwd=certs)  # fmt: skip
    _leaf(certs, "stranger", "clientAuth", ca="other-ca")
    return certs


@pytest.fixture(scope="module")
def mtls_stub(certs: Path) -> Iterator[StubServer]:
    """An HTTPS upstream that wants a client certificate signed by the test CA."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(certs / "ca.pem"))
    context.load_cert_chain(certs / "leaf.pem", certs / "leaf.key")
    context.verify_mode = ssl.CERT_REQUIRED
    server = StubServer(ttft_s=0.01, itl_s=0.002, tls=context)
    server.start()
    yield server
    server.stop()


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


def test_mutual_tls_with_the_gateways_own_certificate(mtls_stub, client_certs):
    ca, c = str(client_certs / "ca.pem"), client_certs
    with gateway(upstreams=[mtls_stub.url], upstream_ca_bundle=ca,
                 upstream_client_cert=str(c / "client.pem"),
                 upstream_client_key=str(c / "client.key")) as (url, gw):  # fmt: skip
        reply = post(url, body("mutual"))
        assert reply.status == 200 and reply.events[-1] == b"data: [DONE]\n\n"
        assert gw.upstreams.all[0].healthy  # the health checks show the certificate too
    # one PEM file holding both the certificate and its key
    both = c / "client-both.pem"
    both.write_bytes((c / "client.pem").read_bytes() + (c / "client.key").read_bytes())
    with gateway(upstreams=[mtls_stub.url], upstream_ca_bundle=ca,
                 upstream_client_cert=str(both)) as (url, _):  # fmt: skip
        assert post(url, body("one file")).status == 200


@pytest.mark.parametrize("cert", [None, "stranger"])
def test_an_upstream_that_wants_a_client_certificate_refuses_none_or_a_strangers(
    mtls_stub, client_certs, cert
):
    c = client_certs
    pair = {"upstream_client_cert": str(c / f"{cert}.pem"),
            "upstream_client_key": str(c / f"{cert}.key")} if cert else {}  # fmt: skip
    with gateway(upstreams=[mtls_stub.url], upstream_ca_bundle=str(c / "ca.pem"),
                 health_interval_s=60, **pair) as (url, gw):  # fmt: skip
        refused = post(url, body(f"no entry {cert}"))
        reason = gw.upstreams.all[0].last_error or ""
        assert not gw.upstreams.all[0].healthy
    assert refused.status in (502, 503), refused.body
    message = refused.json()["error"]["message"]
    assert refused.json()["error"]["type"] == "upstream_error"
    # Without a certificate of its own, the gateway says what to try; with one, it does not.
    assert ("--upstream-client-cert" in message + reason) == (cert is None), message + reason


def test_bad_client_certificate_settings_say_what_is_wrong(client_certs):
    from latlab.gateway.app import Gateway

    c = client_certs
    encrypted = c / "encrypted.key"
    _openssl("pkey", "-in", "client.key", "-aes256", "-passout", "pass:secret", "-out",
             encrypted.name, cwd=c)  # fmt: skip
    https = ["https://127.0.0.1:9"]
    cases = [
        ({"upstream_client_cert": str(c / "client.pem"), "upstream_client_key":
          str(c / "leaf.key")}, "cannot load them"),  # a key of another certificate
        ({"upstream_client_cert": str(c / "client.pem"), "upstream_client_key": str(encrypted)},
         "encrypted"),
        ({"upstream_client_cert": str(c / "missing.pem")}, "missing.pem: no such file"),
        ({"upstream_client_cert": str(c / "client.pem"), "upstreams": ["http://127.0.0.1:9"]},
         "for https:// upstreams"),
        ({"upstream_client_key": str(c / "client.key")}, "needs --upstream-client-cert"),
    ]  # fmt: skip
    for fields, match in cases:
        fields.setdefault("upstreams", https)
        with pytest.raises(ConfigError, match=match):
            Gateway(GatewayConfig(**fields))


@pytest.mark.parametrize("reason", [
    "connection_error: server closed the connection",
    "connection_error: ConnectionResetError: [Errno 104] Connection reset by peer",
    "health check: RemoteProtocolError: Server disconnected without sending a response.",
])  # fmt: skip
def test_every_way_a_tls_upstream_hangs_up_gets_the_client_certificate_hint(reason):
    from latlab.gateway.upstreams import Upstream

    bare, with_cert = (
        Upstream("https://127.0.0.1:9"),
        Upstream("https://127.0.0.1:9", client_cert=True),
    )
    for up in (bare, with_cert, Upstream("http://127.0.0.1:9")):
        up.failed(reason, eject_after=2)
    assert bare.last_error.endswith("give the gateway one with --upstream-client-cert")
    assert with_cert.last_error == reason
