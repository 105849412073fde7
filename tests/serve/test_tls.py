"""HTTPS: ``tunelab serve --ssl-certfile/--ssl-keyfile`` with a self-signed certificate made here, the flags'
one-line errors, and the warning for a server reachable off loopback without TLS."""

from __future__ import annotations

import ipaddress
import signal
import ssl
import time
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import httpx
import openai
import pytest

from tests.serve.test_cli_serve import start
from tunelab.cli import main
from tunelab.registry.db import open_registry
from tunelab.registry.keys import create_key
from tunelab.serve import command
from tunelab.serve.app import ServeSettings


def self_signed(folder, host: str = "127.0.0.1"):
    """A certificate for ``host`` (an IP address SAN) signed by its own key; returns (cert, key) paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tunelab test")])
    now = datetime.now(timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
                   .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]),
                                  critical=False)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                   .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


def test_https_answers_the_openai_client_that_trusts_the_certificate_and_only_it(tiny_model_dir, tmp_path):
    cert, key_file = self_signed(tmp_path)
    with open_registry().session() as session:
        key = create_key(session, "tls-test", "inference")[1]
    process, url = start("--base", str(tiny_model_dir), "--ssl-certfile", str(cert), "--ssl-keyfile", str(key_file))
    https = url.replace("http://", "https://")
    trusted = ssl.create_default_context(cafile=str(cert))
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.stdout.read()
            try:
                if httpx.get(f"{https}/ready", verify=trusted, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the HTTPS server did not become ready"
                time.sleep(0.2)
        with httpx.Client(verify=trusted, timeout=60) as http:
            client = openai.OpenAI(base_url=f"{https}/v1", api_key=key, max_retries=0, http_client=http)
            base = client.models.list().data[0].id
            answer = client.chat.completions.create(model=base, messages=[{"role": "user", "content": "hi"}],
                                                    max_tokens=3, temperature=0)
            assert answer.usage.completion_tokens >= 1
        with pytest.raises(httpx.TransportError):  # plain HTTP to the TLS port: no answer
            httpx.get(f"{url}/health", timeout=10)
        with httpx.Client(timeout=10) as untrusting, pytest.raises(openai.APIConnectionError) as failed:
            # the system's CAs only
            openai.OpenAI(base_url=f"{https}/v1", api_key=key, max_retries=0, http_client=untrusting).models.list()
        causes, error = [], failed.value
        while error is not None:
            causes.append(error)
            error = error.__cause__ or error.__context__
        assert any(isinstance(c, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(c)
                   for c in causes), causes
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    assert f"at {https}/v1" in process.stdout.read()


def test_the_tls_flags_come_as_a_pair_that_loads_or_fail_in_one_line(tmp_path, capsys):
    cert, key = self_signed(tmp_path)
    (tmp_path / "other").mkdir()
    _, other_key = self_signed(tmp_path / "other")
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    cases = [(["--ssl-certfile", str(cert)], "--ssl-certfile needs --ssl-keyfile too"),
             (["--ssl-keyfile", str(key)], "--ssl-keyfile needs --ssl-certfile too"),
             (["--ssl-certfile", str(cert), "--ssl-keyfile", str(other_key)], "the key is not the certificate's"),
             (["--ssl-certfile", str(tmp_path / "junk.pem"), "--ssl-keyfile", str(key)], "a PEM certificate"),
             (["--ssl-certfile", str(tmp_path / "none.pem"), "--ssl-keyfile", str(key)], "No such file")]
    for flags, message in cases:
        assert main(["serve", "--base", "no-such-model", *flags]) == 2  # refused before the model is looked at
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err


def test_off_loopback_without_tls_warns_in_one_line(tmp_path, monkeypatch, capsys):
    cert, key = self_signed(tmp_path)
    started = []
    state = SimpleNamespace(pool=SimpleNamespace(served={"base": None}), ab_tests={})
    monkeypatch.setattr(command, "ServerState", lambda settings: state)
    monkeypatch.setattr(command, "build_app", lambda state: "app")
    monkeypatch.setattr(command.uvicorn, "run", lambda app, **options: started.append(options))

    def warnings(host: str, auth: bool = True, tls: bool = False) -> list[str]:
        files = {"ssl_certfile": str(cert), "ssl_keyfile": str(key)} if tls else {}
        command.serve(ServeSettings(base="base", auth=auth), host=host, **files)
        return [line for line in capsys.readouterr().err.splitlines() if "WARNING" in line]

    assert warnings("127.0.0.1") == [] and warnings("localhost") == [] and warnings("0.0.0.0", tls=True) == []
    exposed = warnings("0.0.0.0")
    assert len(exposed) == 1 and "0.0.0.0 without TLS" in exposed[0] and "--ssl-certfile" in exposed[0]
    both = warnings("10.1.2.3", auth=False)
    assert any("without TLS" in line for line in both) and any("--no-auth on 10.1.2.3" in line for line in both)
    with_tls = started[2]  # the third start: 0.0.0.0 with TLS; uvicorn gets both files
    assert (with_tls["host"], with_tls["ssl_certfile"], with_tls["ssl_keyfile"]) == ("0.0.0.0", str(cert), str(key))
