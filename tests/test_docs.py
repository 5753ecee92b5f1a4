"""The documentation: the README stays a front door, every relative link resolves, and the MkDocs site builds with
``--strict`` (a missing page or anchor, or a page in the nav that does not exist, fails the build)."""

import glob
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
README_MAX_LINES = 250

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
HTML_COMMENT = re.compile(r"<!--.*?-->", re.S)
INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_DEF = re.compile(r"^[ ]{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.M)
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def doc_files():
    return [README] + sorted(glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True))


def relative_links(text):
    """The link targets of Markdown ``text`` that are relative paths (no scheme, not a bare #anchor), outside code
    blocks, code spans and HTML comments."""
    text = HTML_COMMENT.sub("", CODE_SPAN.sub("", FENCE.sub("", text)))
    targets = INLINE_LINK.findall(text) + REFERENCE_DEF.findall(text)
    return [t for t in targets if not SCHEME.match(t) and not t.startswith("#") and not t.startswith("//")]


def broken_links(path):
    """(link, resolved path) of each relative link in ``path`` whose file does not exist."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    out = []
    for link in relative_links(text):
        target = link.split("#", 1)[0].split("?", 1)[0]
        resolved = os.path.normpath(os.path.join(os.path.dirname(path), target))
        if not os.path.exists(resolved):
            out.append((link, os.path.relpath(resolved, ROOT)))
    return out


def test_the_readme_is_a_front_door():
    with open(README, encoding="utf-8") as f:
        lines = f.read().splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines, more than {README_MAX_LINES}: move the detail into docs/")


def test_the_link_finder_sees_links_and_skips_code():
    text = ("[a](docs/a.md) ![b](img/b.png \"t\") [c](https://x.org/c.md) [d](#anchor) `[e](e.md)`\n"
            "```\n[f](f.md)\n```\n[g]: g.md\n<!-- [h](h.md) -->\n")
    assert relative_links(text) == ["docs/a.md", "img/b.png", "g.md"]


def test_every_relative_link_points_to_an_existing_file():
    broken = {os.path.relpath(p, ROOT): b for p in doc_files() if (b := broken_links(p))}
    assert not broken, "links to missing files: " + "; ".join(
        f"{page}: " + ", ".join(f"{link} -> {target}" for link, target in links) for page, links in broken.items())


def test_mkdocs_builds_strict(tmp_path):
    try:
        import material  # noqa: F401  (the theme mkdocs.yml names)
        import mkdocs  # noqa: F401
    except ImportError as e:
        pytest.skip(f"mkdocs / mkdocs-material not importable ({e}); install the docs extra: pip install -e \".[docs]\"")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                           os.path.join(ROOT, "mkdocs.yml"), "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    assert (tmp_path / "site" / "index.html").is_file()
