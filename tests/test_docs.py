"""The README and docs/ stay true: every relative link and anchor resolves, and the README's
exit-code table is what the CLI does."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

import bundler.cli
from bundler import errors
from bundler.cli import main

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "RESULTS.md"]
# Written on other branches of issue 21 (the bundle.toml reference, adding a model kind or a layout):
# linked from the README before they land. Empty this once they are merged.
WRITTEN_ELSEWHERE = {"docs/config.md", "docs/model-kinds.md", "docs/layouts.md"}
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _prose(text: str) -> str:
    """The page without its fenced code blocks (a `[x](y)` there is code, not a link)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation but `-` and `_` dropped, spaces as `-`."""
    headings = re.findall(r"^#{1,6} (.+)$", _prose(page.read_text(encoding="utf-8")), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.replace("`", "").strip().lower()).replace(" ", "-") for h in headings}


def _links() -> list[tuple[Path, str]]:
    return [
        (page, target)
        for page in PAGES
        for target in LINK.findall(_prose(page.read_text(encoding="utf-8")))
        if not re.match(r"[a-z]+:", target)
    ]


def test_the_anchor_rule_matches_githubs() -> None:
    assert "the-dry-runs-runtime-a-twin-of-the-kaggle-image" in _anchors(ROOT / "docs" / "twin.md")
    assert "bundler-dry-run" in _anchors(ROOT / "docs" / "commands.md")


@pytest.mark.parametrize(("page", "target"), _links(), ids=lambda v: v.name if isinstance(v, Path) else v)
def test_every_relative_link_resolves(page: Path, target: str) -> None:
    path, _, anchor = target.partition("#")
    dest = (page.parent / path).resolve() if path else page
    if not dest.exists() and dest.relative_to(ROOT).as_posix() in WRITTEN_ELSEWHERE:
        return
    assert dest.is_file(), f"{page.relative_to(ROOT)}: {target} is not a file"
    if anchor:
        assert anchor in _anchors(dest), f"{page.relative_to(ROOT)}: no heading #{anchor} in {dest.relative_to(ROOT)}"


def _exit_codes() -> set[int]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    table = text.split("| exit code | when |", 1)[1].split("\n\n", 1)[0]
    return {int(m) for m in re.findall(r"^\|\s*(\d+)\s*\|", table, flags=re.M)}


def test_the_readme_exit_codes_are_the_clis(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _exit_codes() == {0, 1, 2, 130, 143}
    # 1 and 2: every error the CLI reports exits 1, but a config error 2.
    tree = [errors.BundlerError]
    for cls in tree:
        tree.extend(cls.__subclasses__())
        assert cls.exit_code == (2 if issubclass(cls, errors.ConfigError) else 1), cls.__name__
    config = tmp_path / "bundle.toml"
    config.write_text("[bundle]\nname = 'x'\nno_such_key = 1\n", encoding="utf-8")
    assert CliRunner().invoke(main, ["build", "--config", str(config)]).exit_code == 2
    assert CliRunner().invoke(main, ["build", "--no-such-flag"]).exit_code == 2

    def interrupted(path: Path) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(bundler.cli, "load_config", interrupted)
    assert CliRunner().invoke(main, ["build", "--config", str(config)]).exit_code == 130

    def terminated(path: Path) -> None:
        raise bundler.cli.Terminated("stopped by signal 15")

    monkeypatch.setattr(bundler.cli, "load_config", terminated)
    assert CliRunner().invoke(main, ["build", "--config", str(config)]).exit_code == 143
