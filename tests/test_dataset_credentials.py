"""Credential refusal: names, key material in text and in binary files, and inside wheels."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from bundler.build.credentials import check_content, check_input, check_name, credential_name, find_key, scan_wheel
from bundler.errors import CredentialError

KAGGLE_JSON = b'{"username": "someone", "key": "0123456789abcdef0123456789abcdef"}'


@pytest.mark.parametrize(
    "name",
    ["kaggle.json", ".env", "server.pem", "id_rsa", "id_rsa.pub", "hf_token", "access_token", ".netrc", "credentials"],
)
def test_credential_names_are_refused(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"x")
    with pytest.raises(CredentialError, match=r"bundle\.toml segmenters\[0\]\.checkpoint: .*credential file"):
        check_name(path, "bundle.toml segmenters[0].checkpoint")


@pytest.mark.parametrize("name", ["unet.pth", "model.safetensors", "fold0.ckpt", "environment.pt"])
def test_ordinary_names_pass(name: str) -> None:
    assert credential_name(name) is None


@pytest.mark.parametrize(
    ("text", "what"),
    [
        (KAGGLE_JSON, "Kaggle API key"),
        (b"token = KGAT_0123456789abcdef0123456789abcdef", "Kaggle API token"),
        (b"export KAGGLE_KEY=0123456789abcdef0123456789abcdef", "Kaggle key"),
        (b"aws_access_key_id = AKIAZ3X4Y5W6V7U8T9S0", "AWS access key id"),
        (b"aws_secret_access_key = " + b"a" * 40, "AWS secret key"),
        (b"HF_TOKEN=hf_" + b"aB3" * 11 + b"Z", "Hugging Face token"),
        (b"-----BEGIN OPENSSH PRIVATE KEY-----\nabc", "private key"),
    ],
)
def test_key_material_is_recognised(text: bytes, what: str) -> None:
    found = find_key(b"\x80\x02 binary prefix " + text + b" q\x0f suffix")
    assert found is not None and what in found


@pytest.mark.parametrize(
    "text",
    [b"AKIAIOSFODNN7EXAMPLE", b"hf_hub_download(repo_id)", b'"key": "not-hex"', b"KAGGLE_KEY=", bytes(range(256)) * 64],
)
def test_documentation_examples_and_noise_pass(text: bytes) -> None:
    assert find_key(text) is None


def test_key_across_a_chunk_boundary_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import bundler.build.credentials as credentials

    monkeypatch.setattr(credentials, "_CHUNK", 64)
    path = tmp_path / "weights.bin"
    path.write_bytes(b"\0" * 50 + KAGGLE_JSON + b"\0" * 50)
    with pytest.raises(CredentialError, match=r"weights\.bin contains what looks like a Kaggle API key"):
        check_content(path, "checkpoint")
    clean = tmp_path / "clean.bin"
    clean.write_bytes(b"\0" * 500)
    check_input(clean, "checkpoint")  # no exception: nothing to refuse


def _wheel(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_wheels_are_looked_into(tmp_path: Path) -> None:
    ok = _wheel(
        tmp_path / "ok-1.0-py3-none-any.whl",
        {"ok/__init__.py": b"x = 1\n", "ok/tokenizer.py": b"", "ok/cacert.pem": b"-----BEGIN CERTIFICATE-----"},
    )
    scan_wheel(ok)  # library files named like tokens or certificates are not credentials
    bad = _wheel(tmp_path / "bad-1.0-py3-none-any.whl", {"bad/.env": b"A=1"})
    with pytest.raises(CredentialError, match=r"bad-1\.0-py3-none-any\.whl: carries 'bad/\.env'"):
        scan_wheel(bad)
    keyed = _wheel(tmp_path / "keyed-1.0-py3-none-any.whl", {"keyed/config.py": b"KEY = 'hf_" + b"x" * 34 + b"'"})
    with pytest.raises(CredentialError, match=r"'keyed/config\.py' contains what looks like a Hugging Face token"):
        scan_wheel(keyed)
    (tmp_path / "broken.whl").write_bytes(b"not a zip")
    with pytest.raises(CredentialError, match="not a zip archive"):
        scan_wheel(tmp_path / "broken.whl")
