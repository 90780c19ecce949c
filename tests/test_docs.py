"""The documentation: every relative link resolves, the README stays an entry page, the
configuration page lists every config key, and no page speaks of how the project is developed."""
import dataclasses
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 300
# Words from a development tracker, which a user of the package has never heard of.
TRACKER_WORDS = re.compile(r"\b(levers?|goals?|tickets?|the issue)\b", re.IGNORECASE)

FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[(?:[^\]\n]*)\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.MULTILINE)


def prose(text: str) -> str:
    """The text without fenced code blocks and code spans, whose brackets are not links."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lowercase, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"<[^>]+>", "", heading).replace("`", "").lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set:
    seen, out = {}, set()
    for heading in HEADING.findall(FENCE.sub("", page.read_text())):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        out.add(base if count == 0 else f"{base}-{count}")
    return out


def links(page: Path):
    for target in LINK.findall(prose(page.read_text())):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, https:, mailto:
            continue
        yield target


def test_the_pages_exist():
    names = {p.name for p in PAGES}
    assert {"README.md", "install.md", "configuration.md", "commands.md", "design.md"} <= names


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    broken = []
    for target in links(page):
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{target}: no file {resolved.relative_to(ROOT) if ROOT in resolved.parents else resolved}")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: no heading #{anchor} in {resolved.name}")
    assert not broken, f"{page.name}: " + "; ".join(broken)


def test_the_link_check_finds_broken_links_and_anchors(tmp_path):
    (tmp_path / "other.md").write_text("# A page\n\n## Fitting at scale: memory\n")
    page = tmp_path / "page.md"
    page.write_text("[ok](other.md#fitting-at-scale-memory) [gone](missing.md) [bad](other.md#nope)\n"
                    "`[code](not-a-link.md)` [web](https://example.org/x.md)\n")
    found = [(t, (page.parent / t.partition("#")[0]).exists()) for t in links(page)]
    assert found == [("other.md#fitting-at-scale-memory", True), ("missing.md", False), ("other.md#nope", True)]
    assert anchors(tmp_path / "other.md") == {"a-page", "fitting-at-scale-memory"}


def test_readme_is_an_entry_page():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail into docs/"
    text = "\n".join(lines)
    # The set-up commands come before everything else a user reads, and `make test` is the test
    # command CI runs (.ci/run).
    assert text.index("make install") < text.index("## A five-minute tour")
    assert "make test" in text and "make demo" in text


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_page_speaks_of_the_development_process(page):
    hits = sorted({m.group(0) for m in TRACKER_WORDS.finditer(prose(page.read_text()))})
    assert not hits, f"{page.name} mentions {hits}: say what the user gets instead"


def config_keys(schema, prefix=""):
    """Every dotted key of a config dataclass, sections included recursively."""
    for f in dataclasses.fields(schema):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            yield from config_keys(type(default), f"{prefix}{f.name}.")
        elif isinstance(default, dict):
            yield from (f"{prefix}{f.name}.{key}" for key in default)
        else:
            yield f"{prefix}{f.name}"


def test_configuration_page_lists_every_key():
    from datamodels import config

    page = (ROOT / "docs" / "configuration.md").read_text()
    keys = list(config_keys(config.Config))
    assert "sweep.num_models" in keys and "fit.prior_gamma" in keys and "worker.name" in keys
    missing = [k for k in keys if f"`{k}`" not in page]
    assert not missing, f"docs/configuration.md does not document {missing}"


@pytest.mark.parametrize("worker", ["workers.mlp", "workers.cifar_resnet9"])
def test_configuration_page_lists_every_setting_of_the_bundled_workers(worker):
    import importlib

    page = (ROOT / "docs" / "configuration.md").read_text()
    section = page[page.index(f"### `{worker}`"):]
    section = section[:section.find("\n### ", 1) if "\n### " in section[1:] else len(section)]
    missing = [f.name for f in dataclasses.fields(importlib.import_module(worker).Config)
               if f"`worker.{f.name}`" not in section]
    assert not missing, f"docs/configuration.md's {worker} section does not document {missing}"
