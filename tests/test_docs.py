"""The front door: README links into the docs site resolve, the README's results table is
the site's, the README keeps the commands .ci/run runs, and the site's nav and CLI
reference cover every page and command. ``mkdocs build --strict`` (in .ci/run) checks the
site's own links; these checks are the fast part, and the README is not in the site."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"

LINK = re.compile(r"\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    """The anchor MkDocs gives a heading (Python-Markdown's toc ``slugify`` on its text)."""
    toc = pytest.importorskip("markdown.extensions.toc", reason="pip install -e '.[docs]'")
    text = re.sub(r"[`*_]", "", heading)
    return toc.slugify(text, "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # no # lines in code
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6} +(.+?) *$", text, flags=re.M)}


def _readme_links() -> list[str]:
    return [t for t in LINK.findall(README.read_text()) if not re.match(r"[a-z]+:", t)]


def test_readme_links_into_docs_resolve() -> None:
    links = _readme_links()
    into_docs = [t for t in links if t.startswith("docs/")]
    assert len(into_docs) >= 15, into_docs  # the README points into the site, page by page
    for target in links:
        path, _, anchor = target.partition("#")
        file = REPO / path
        assert file.is_file(), f"README.md links to {target}: no such file"
        if anchor:
            assert anchor in _anchors(file), f"README.md links to {target}: no such heading"


def test_readme_is_short() -> None:
    assert len(README.read_text().splitlines()) <= 200


def test_readme_results_table_is_the_sites() -> None:
    table = (DOCS / "snippets" / "tools_table.md").read_text().strip()
    assert table.count("\n") == 6  # header, rule, 2 bundled models, 3 offline tools
    assert table in README.read_text()
    for page in ("index.md", "results/index.md"):
        assert '--8<-- "tools_table.md"' in (DOCS / page).read_text(), page


def test_readme_keeps_what_ci_runs() -> None:
    ci = (REPO / ".ci" / "run").read_text()
    readme = README.read_text()
    for command in ('python3 -m pip install -e ".[dev,pretrained,ray]"', "python3 -m pytest -q"):
        assert command in ci and command in readme, command
    assert "mkdocs build --strict" in ci


def _nav_pages(node: object) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [p for v in node.values() for p in _nav_pages(v)]
    if isinstance(node, list):
        return [p for v in node for p in _nav_pages(v)]
    return []


def test_nav_lists_every_page_once() -> None:
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text())
    nav = _nav_pages(config["nav"])
    pages = sorted(
        p.relative_to(DOCS).as_posix()
        for p in DOCS.rglob("*.md")
        if p.relative_to(DOCS).parts[0] not in ("snippets", "hooks")
    )
    assert sorted(nav) == pages
    assert len(nav) == len(set(nav))


def test_cli_reference_covers_every_command() -> None:
    pytest.importorskip("typer.cli", reason="typer's doc generator")
    spec = importlib.util.spec_from_file_location(
        "cli_reference", DOCS / "hooks" / "cli_reference.py"
    )
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    import typer.main

    from agegender.cli import app

    markdown = hook.cli_markdown()
    root = typer.main.get_command(app)
    assert markdown.startswith("## `agegender`")
    names = []
    for name, command in root.commands.items():
        subs = getattr(command, "commands", None) or {}
        names += [f"{name} {sub}" for sub in subs] or [name]
    assert len(names) >= 13
    for name in names:
        assert re.search(rf"^#+ `agegender {name}`$", markdown, flags=re.M), name
    page = (DOCS / "reference" / "cli.md").read_text()
    assert hook.MARKER in page
    assert hook.on_page_markdown(page, None, None, None).count("**Usage**") >= len(names)
