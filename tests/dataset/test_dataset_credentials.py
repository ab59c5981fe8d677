"""Credential refusal: names, key material in text and in binary files, and inside wheels."""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path

import pytest
import torch

from bundler.dataset.credentials import (
    check_content,
    check_input,
    check_name,
    credential_name,
    find_key,
    key_like_name,
    key_shaped,
    scan_checkpoint,
    scan_wheel,
)
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
    import bundler.dataset.credentials as credentials

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


KAGGLE_KEY = "0123456789abcdef0123456789abcdef"


class _WithConfig(torch.nn.Module):
    """A TorchScript-able module carrying a config dict, as training code often leaves one."""

    def __init__(self, cfg: dict[str, dict[str, str]]) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 1)
        self.cfg = cfg

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.conv(x)
        return out


def _scripted(path: Path, cfg: dict[str, dict[str, str]], extra: dict[str, str] | None = None) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script's deprecation notice
        module = torch.jit.script(_WithConfig(cfg))  # type: ignore[no-untyped-call]
    torch.jit.save(module, str(path), _extra_files=extra or {})  # type: ignore[no-untyped-call]
    return path


def test_a_kaggle_key_in_a_torchscript_attribute_is_refused_naming_its_path(tmp_path: Path) -> None:
    path = _scripted(tmp_path / "net.pt", {"kaggle": {"username": "someone", "key": KAGGLE_KEY}})
    check_content(path, "checkpoint")  # the byte scan alone misses it: pickled strings are not JSON text
    with pytest.raises(
        CredentialError, match=r"net\.pt holds what looks like a Kaggle API key .* at cfg\.kaggle\.key "
    ) as e:
        scan_checkpoint(path, "bundle.toml segmenters[0].checkpoint")
    assert KAGGLE_KEY not in str(e.value)


def test_a_token_in_a_torchscript_extra_file_is_refused(tmp_path: Path) -> None:
    token = "a1b2c3d4e5f6a7b8c9d0e1f2"
    path = _scripted(tmp_path / "net.pt", {"train": {"lr": "0.1"}}, {"config.json": f'{{"wandb_token": "{token}"}}'})
    with pytest.raises(CredentialError, match=r"at extra/config\.json: wandb_token inside the checkpoint") as e:
        scan_checkpoint(path, "checkpoint")
    assert token not in str(e.value)


@pytest.mark.parametrize("legacy", [False, True])
def test_a_secret_in_a_pth_s_metadata_is_refused_naming_its_path(tmp_path: Path, legacy: bool) -> None:
    path = tmp_path / "ckpt.pth"
    secret = {"logger": {"api_key": "Zx9" * 8}}
    checkpoint = {"state_dict": {"w": torch.zeros(3)}, "hparams": secret}
    torch.save(checkpoint, path, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(CredentialError, match=r"under the name 'api_key'.* at hparams\.logger\.api_key inside"):
        scan_checkpoint(path, "checkpoint")


def test_a_normal_checkpoint_and_torchscript_pass(tmp_path: Path) -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    opt = torch.optim.Adam(model.parameters())
    model(torch.rand(2, 3, 8, 8)).mean().backward()
    opt.step()
    hparams = {
        "encoder": "efficientnet-b4",
        "tokenizer": "bert-base-uncased-2024-v2",
        "checkpoint_key": "model_ema",
        "key_column": "ImageId_ClassId",
        "sha256": "ab" * 32,
        "run_dir": "/home/me/runs/2024-05-01T10-00-00",
        "key": "encoder.layer1.0.conv1.weight",
        "token": "resnet34_imagenet1k_v2",
    }
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "hparams": hparams}, tmp_path / "ok.pth")
    scan_checkpoint(tmp_path / "ok.pth", "checkpoint")
    scan_checkpoint(_scripted(tmp_path / "ok.pt", {"train": {"lr": "0.001", "key": "image"}}), "checkpoint")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        *[("api_key", True), ("hfToken", True), ("DB-PASSWORD", True), ("secret", True), ("key", True)],
        *[("tokenizer", False), ("key_column", True), ("monkey", False), ("max_tokens", False), ("keypoints", False)],
    ],
)
def test_key_like_names(name: str, expected: bool) -> None:
    assert key_like_name(name) is expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0123456789abcdef0123456789abcdef", True),
        ("a1b2c3d4e5f6a7b8c9d0", True),
        ("sk_live_4eC39HqLyjWDarjtT1zdp7dc", True),
        ("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.abc123", True),
        ("encoder.layer1.0.conv1.weight", False),
        ("resnet34_imagenet1k_v2", False),
        ("model_ema", False),
        ("/home/me/runs/2024-05-01", False),
        ("short1a", False),
    ],
)
def test_key_shaped_values(value: str, expected: bool) -> None:
    assert key_shaped(value) is expected
