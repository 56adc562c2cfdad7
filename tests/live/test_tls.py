"""TLS, CORS and the body limit of `expose serve`, against the real server: a throwaway CA
and a server certificate for 127.0.0.1 / localhost made with ``cryptography``; HTTPS REST
calls, wss:// heartbeats and a WHIP offer from aiortc over HTTPS; what a client without the
CA or without TLS gets; one-line config errors; the CORS allow-list; 413 past
server.max_body_bytes."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import websockets
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from live_support import (
    SPEECH_CLIP,
    TOKEN,
    RunningServer,
    collect_events,
    live_config,
    publish_whip,
    running_server,
    stop_process,
)

from expose.monitor.api.serve import TlsFiles, check_tls, resolve_tls
from expose.monitor.config import Config
from expose.monitor.errors import ConfigError

if TYPE_CHECKING:
    from tests.conftest import Clip, RunCli

pytestmark = pytest.mark.timeout(300)

KEY_PASSWORD = "s3cret-pass"


@dataclass(frozen=True)
class Pki:
    ca: Path  # the CA certificate (what a client trusts)
    cert: Path  # server certificate for 127.0.0.1 and localhost, signed by the CA
    key: Path
    other_key: Path  # a key that is not the certificate's
    encrypted_key: Path  # the certificate's key, encrypted with KEY_PASSWORD

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path, password: str | None = None) -> Path:
    crypt = (serialization.NoEncryption() if password is None
             else serialization.BestAvailableEncryption(password.encode()))
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, crypt))
    return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "expose test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    (root / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (root / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Pki(ca=root / "ca.pem", cert=root / "server.pem", key=_write_key(key, root / "server.key"),
               other_key=_write_key(ec.generate_private_key(ec.SECP256R1()), root / "other.key"),
               encrypted_key=_write_key(key, root / "encrypted.key", KEY_PASSWORD))


@pytest.fixture(scope="module")
def tls_server(pki: Pki, tiny_model: Path, profiles_dir: Path,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    cfg = live_config(tmp_path_factory.mktemp("tls-server"),
                      server={"tls_cert": str(pki.cert), "tls_key": str(pki.key)})
    with running_server(cfg, tiny_model, profiles_dir, verify=pki.context()) as srv:
        yield srv


def _port(srv: RunningServer) -> int:
    return int(srv.url.rsplit(":", 1)[1])


# ---- TLS ---------------------------------------------------------------------------------

def test_https_rest_calls_verify_with_the_ca(tls_server: RunningServer) -> None:
    assert tls_server.url.startswith("https://") and tls_server.ws_url.startswith("wss://")
    with tls_server.client() as http:
        health = http.get("/healthz")
        streams = http.get("/api/streams")
        unauthorized = http.get("/api/streams", headers={"Authorization": "Bearer wrong"})
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert streams.status_code == 200 and isinstance(streams.json(), list)
    assert unauthorized.status_code == 401
    # by host name too: the certificate names localhost as well as 127.0.0.1
    r = httpx.get(f"https://localhost:{_port(tls_server)}/healthz", verify=tls_server.verify, timeout=10)
    assert r.status_code == 200


def test_plain_http_to_the_tls_port_gets_no_answer(tls_server: RunningServer) -> None:
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{_port(tls_server)}/healthz", timeout=10)


def test_a_client_without_the_ca_fails_verification(tls_server: RunningServer) -> None:
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{tls_server.url}/healthz", verify=ssl.create_default_context(), timeout=10)

    async def wss_without_ca() -> None:
        async with websockets.connect(f"{tls_server.ws_url}?token={TOKEN}", open_timeout=10,
                                      ssl=ssl.create_default_context()):
            pass

    with pytest.raises(ssl.SSLCertVerificationError):
        asyncio.run(wss_without_ca())


def test_the_websocket_over_wss_gets_a_heartbeat(tls_server: RunningServer) -> None:
    assert isinstance(tls_server.verify, ssl.SSLContext)
    msgs = asyncio.run(collect_events(tls_server.ws_url, lambda ms: any(m["type"] == "heartbeat" for m in ms),
                                      timeout=20, ssl_context=tls_server.verify))
    assert [m["type"] for m in msgs][-1] == "heartbeat"


def test_a_whip_offer_over_https_is_answered(tls_server: RunningServer, clip: Clip) -> None:
    assert isinstance(tls_server.verify, ssl.SSLContext)
    code, headers, _ = asyncio.run(publish_whip(f"{tls_server.url}/whip/tls-cam?profile=trump", clip(SPEECH_CLIP),
                                                ssl_context=tls_server.verify))
    assert code == 201, headers
    assert headers["content-type"].startswith("application/sdp") and headers["location"].startswith("/whip/tls-cam/")


def test_expose_serve_prints_https_and_wss_urls_and_serves_them(pki: Pki, tmp_path: Path, tiny_model: Path,
                                                                 profiles_dir: Path) -> None:
    cfg = tmp_path / "expose.toml"
    cfg.write_text(f'[server]\ndb_path = "{tmp_path / "m.sqlite3"}"\ntls_cert = "{pki.cert}"\n'
                   f'tls_key = "{pki.encrypted_key}"\n', encoding="utf-8")
    env = {**os.environ, "EXPOSE_TOKEN": TOKEN, "EXPOSE_TLS_KEY_PASSWORD": KEY_PASSWORD,
           "COLUMNS": "200"}  # rich wraps at 80 columns without a terminal
    proc = subprocess.Popen([sys.executable, "-m", "expose.monitor.cli", "serve", "--config", str(cfg), "--port", "0",
                             "--model", str(tiny_model), "--profiles", str(profiles_dir)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(4)]
        assert lines[0].startswith("expose live monitor on https://127.0.0.1:"), lines
        assert any(line.startswith("WHIP ingest: POST https://") for line in lines), lines
        ws = next(line.split()[1] for line in lines if line.startswith("events:"))
        assert ws.startswith("wss://127.0.0.1:") and ws.endswith("/ws?token=TOKEN")
        base = lines[0].split()[4]
        deadline = time.monotonic() + 60
        while True:
            try:
                r = httpx.get(f"{base}/api/streams", headers={"Authorization": f"Bearer {TOKEN}"},
                              verify=pki.context(), timeout=5)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "server did not answer"
                time.sleep(0.2)
        assert r.status_code == 200
        msgs = asyncio.run(collect_events(ws.split("?")[0], lambda ms: bool(ms), timeout=20,
                                          ssl_context=pki.context()))
        assert msgs and msgs[0]["type"] == "heartbeat"
    finally:
        stop_process(proc, signal.SIGINT, timeout=30)
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""


# ---- config errors: one line, exit status 2, before the model loads ------------------------

@pytest.mark.parametrize(("server", "message"), [
    ({"tls_cert": "{cert}"}, "set both server.tls_cert and server.tls_key, or neither"),
    ({"tls_key": "{key}"}, "set both server.tls_cert and server.tls_key, or neither"),
    ({"tls_cert": "{cert}", "tls_key": "{missing}"}, "server.tls_key: no such file"),
    ({"tls_cert": "{missing}", "tls_key": "{key}"}, "server.tls_cert: no such file"),
    ({"tls_cert": "{cert}", "tls_key": "{other_key}"}, "is not the key of the certificate"),
    ({"tls_cert": "{cert}", "tls_key": "{encrypted_key}"}, "is encrypted: set server.tls_key_password"),
], ids=["cert-only", "key-only", "missing-key", "missing-cert", "wrong-key", "encrypted-no-password"])
def test_serve_refuses_bad_tls_config_in_one_line(server: dict[str, str], message: str, pki: Pki,
                                                  tmp_path: Path, run_cli: RunCli, tiny_model: Path) -> None:
    paths = {"cert": pki.cert, "key": pki.key, "other_key": pki.other_key, "encrypted_key": pki.encrypted_key,
             "missing": tmp_path / "missing.pem"}
    lines = ["[server]", f'db_path = "{tmp_path / "m.sqlite3"}"']
    lines += [f'{k} = "{v.format(**paths)}"' for k, v in server.items()]
    (tmp_path / "expose.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    r = run_cli("serve", "--config", tmp_path / "expose.toml", "--port", "0", "--model", tiny_model,
                "--profiles", tmp_path / "profiles", timeout=60)
    assert r.returncode == 2, r.stdout + r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_tls_files_checked_directly(pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    check_tls(TlsFiles(pki.cert, pki.key))
    check_tls(TlsFiles(pki.cert, pki.encrypted_key, KEY_PASSWORD))
    with pytest.raises(ConfigError, match="cannot decrypt server.tls_key"):
        check_tls(TlsFiles(pki.cert, pki.encrypted_key, "wrong"))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not PEM files"):
        check_tls(TlsFiles(garbage, pki.key))
    with pytest.raises(ConfigError, match="not PEM files"):
        check_tls(TlsFiles(pki.cert, garbage))
    # the password from the environment, as EXPOSE_TOKEN overrides server.token
    cfg = Config.model_validate({"server": {"tls_cert": str(pki.cert), "tls_key": str(pki.encrypted_key),
                                            "tls_key_password": "wrong"}})
    monkeypatch.setenv("EXPOSE_TLS_KEY_PASSWORD", KEY_PASSWORD)
    assert resolve_tls(cfg.server) == TlsFiles(pki.cert, pki.encrypted_key, KEY_PASSWORD)
    monkeypatch.delenv("EXPOSE_TLS_KEY_PASSWORD")
    with pytest.raises(ConfigError, match="cannot decrypt"):
        resolve_tls(cfg.server)
    assert resolve_tls(Config().server) is None


# ---- CORS ----------------------------------------------------------------------------------

def _preflight(http: httpx.Client, origin: str, method: str = "GET") -> httpx.Response:
    return http.options("/api/streams", headers={"Origin": origin, "Access-Control-Request-Method": method,
                                                 "Access-Control-Request-Headers": "authorization"})


def test_cors_is_off_by_default(tls_server: RunningServer) -> None:
    assert Config().server.cors_origins == []
    with tls_server.client() as http:
        pre = _preflight(http, "https://elsewhere.example")
        get = http.get("/api/streams", headers={"Origin": "https://elsewhere.example"})
    assert "access-control-allow-origin" not in pre.headers
    assert get.status_code == 200 and "access-control-allow-origin" not in get.headers


def test_cors_allows_exactly_the_configured_origins(tiny_model: Path, profiles_dir: Path, tmp_path: Path) -> None:
    allowed = "https://console.example:8443"
    cfg = live_config(tmp_path, server={"cors_origins": [allowed]})
    with running_server(cfg, tiny_model, profiles_dir) as srv, srv.client() as http:
        assert srv.url.startswith("http://")  # no TLS configured: the default, plain HTTP
        ok = _preflight(http, allowed, "POST")
        other = _preflight(http, "https://elsewhere.example")
        get = http.get("/api/streams", headers={"Origin": allowed})
        put = _preflight(http, allowed, "PUT")
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == allowed
    assert {"GET", "POST", "DELETE"} <= {m.strip() for m in ok.headers["access-control-allow-methods"].split(",")}
    assert "authorization" in ok.headers["access-control-allow-headers"].lower()
    assert "access-control-allow-origin" not in other.headers
    assert get.status_code == 200 and get.headers["access-control-allow-origin"] == allowed
    assert "location" in get.headers["access-control-expose-headers"].lower()
    assert put.status_code == 400  # a method not allowed
    with pytest.raises(ConfigError, match="cors_origins"):
        from expose.monitor.config import load_config

        bad = tmp_path / "bad.toml"
        bad.write_text('[server]\ncors_origins = ["https://console.example/"]\n', encoding="utf-8")
        load_config(bad)


# ---- body limit ------------------------------------------------------------------------------

def test_a_body_over_max_body_bytes_gets_413_and_the_server_keeps_serving(tls_server: RunningServer) -> None:
    limit = tls_server.service.monitor.cfg.server.max_body_bytes
    assert limit == 1 << 20
    big = b"{" + b" " * (2 << 20) + b"}"

    def chunks() -> Iterator[bytes]:  # no Content-Length: Transfer-Encoding chunked
        for i in range(0, len(big), 64 << 10):
            yield big[i:i + (64 << 10)]

    with tls_server.client() as http:
        declared = http.post("/api/streams", content=big, headers={"Content-Type": "application/json"})
        chunked = http.post("/api/streams", content=chunks(), headers={"Content-Type": "application/json"})
        unauthorized = httpx.post(f"{tls_server.url}/api/streams", content=big, verify=tls_server.verify, timeout=30)
        health = http.get("/healthz")
        added = http.post("/api/streams", json={"name": "after-413", "profile": "trump"})
        removed = http.delete("/api/streams/after-413")
    for r in (declared, chunked, unauthorized):  # the limit applies before the token is looked at
        assert r.status_code == 413, r.text
        assert r.headers["content-type"] == "application/json"
        body: dict[str, Any] = r.json()
        assert f"over the {limit}-byte limit" in body["detail"]
    assert health.status_code == 200
    assert added.status_code == 201 and removed.status_code == 204
