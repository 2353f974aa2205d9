"""The README and the pages of docs/ against the code and against each other: the presets table
(docs/gpu.md, docs/testbed.md) and the methods table (docs/methods.md) against presets.PRESETS and
presets.METHODS, so a recipe or preset changed in one place and not the other fails here; the
README's length, its links to every page of docs/, every relative link and anchor of the README
and of docs/ (a page moved or renamed, a heading reworded), and its THR snippet, run."""
import re
from pathlib import Path

from thrlab.train.config import Config, _coerce
from thrlab.train.presets import METHODS, PRESETS, preset_config

ROOT = Path(__file__).resolve().parents[1]
README_PATH = ROOT / "README.md"
README = README_PATH.read_text()
DOCS = sorted((ROOT / "docs").glob("*.md"))
MAX_README_LINES = 250


def page(name: str) -> str:
    return (ROOT / "docs" / name).read_text()


def table(text: str, header: str) -> list[list[str]]:
    """The body rows of the Markdown table in `text` whose header row starts with `header`."""
    assert header in text, f"no table starting {header!r}"
    lines = text[text.index(header):].splitlines()
    rows = []
    for line in lines[2:]:  # header, |---| separator
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def names(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def section(text: str, heading: str) -> str:
    """The text under the `## heading` line, up to the next heading of level 1 or 2."""
    start = text.index(f"\n## {heading}\n") + len(heading) + 5
    end = re.search(r"^#{1,2} ", text[start:], re.M)
    return text[start:start + end.start()] if end else text[start:]


def test_presets_table_is_the_config():
    rows = table(page("gpu.md"), "| preset | model | LoRA r / alpha |")
    testbed = {n for row in table(page("testbed.md"), "| preset | task | what narrows")
               for n in names(row[0])}
    assert {names(r[0])[0] for r in rows} | testbed == set(PRESETS)
    for row in rows:
        c = preset_config(names(row[0])[0])
        model = "embedded 1M model" if c.model == "tiny" else c.model
        micro = c.micro_batch_size or "all"
        want = [model, f"{c.lora_r} / {c.lora_alpha}", f"{c.lr:.0e}".replace("e-0", "e-"),
                f"{c.prompts_per_step} x {c.group_size}", f"{c.mini_batches} x {micro}",
                str(c.steps), f"{c.max_new_tokens} / {c.eval_max_new_tokens}"]
        assert row[1:] == want, row[0]


def test_methods_table_is_the_recipes():
    """Every recipe is named once; every `field=value` the table writes is the recipe's value
    (or the default where the recipe leaves the field alone) for the methods of its row."""
    rows = table(page("methods.md"), "| method | overrides | what it does |")
    listed = [m for row in rows for m in names(row[0])]
    assert sorted(listed) == sorted(METHODS)
    fields = set(Config.__dataclass_fields__)
    for row in rows:
        methods = names(row[0])
        for key, value in re.findall(r"`(\w+)=([^`]+)`", row[1]):
            if key not in fields:
                continue
            want = _coerce(Config, key, value)
            got = {METHODS[m].get(key, getattr(preset_config("tiny"), key)) for m in methods}
            assert want in got, (row[0], key, value, got)


def test_readme_methods_list_names_every_recipe_once():
    listed = [n for line in section(README, "Methods").splitlines() if line.startswith("- ")
              for n in names(line)]
    assert sorted(listed) == sorted(METHODS)


def test_readme_is_short():
    n = len(README.splitlines())
    assert n <= MAX_README_LINES, (f"README.md has {n} lines, at most {MAX_README_LINES}: move "
                                   "the detail to a page of docs/ and link it")


# Links. Code (fenced blocks, inline spans) and $math$ are not Markdown, so they are blanked first.
FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")


def prose(text: str) -> str:
    text = FENCE.sub("", text)
    text = re.sub(r"`[^`\n]*`", "", text)
    return re.sub(r"\$[^$\n]+\$", "", text)


def links(path: Path) -> list[str]:
    return LINK.findall(prose(path.read_text()))


def anchors(path: Path) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces to hyphens, -1, -2 on repeats."""
    seen: dict[str, int] = {}
    for line in FENCE.sub("", path.read_text()).splitlines():
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", m.group(1))  # a link keeps its text
        slug = re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        seen.setdefault(f"{slug}-{n}" if n else slug, 1)
    return set(seen)


def test_relative_links_and_anchors_resolve():
    """Every relative link of README.md and docs/*.md names a file that exists (relative to the
    page), and every #anchor into a Markdown page names one of its headings."""
    broken = []
    for src in [README_PATH, *DOCS]:
        for target in links(src):
            if not target or re.match(r"[a-z][a-z0-9+.-]*:", target, re.I):  # http:, mailto:
                continue
            file, _, anchor = target.partition("#")
            dest = (src.parent / file).resolve() if file else src
            where = f"{src.relative_to(ROOT)} -> {target}"
            if not dest.exists():
                broken.append(f"{where}: no such file")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{where}: no heading with that anchor")
    assert not broken, "\n".join(broken)


def test_readme_links_every_docs_page():
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in links(README_PATH)}
    missing = [p.name for p in DOCS if p.resolve() not in linked]
    assert not missing, f"docs pages the README does not link: {missing}"


def test_readme_thr_snippet_runs():
    """The README's snippet that computes THR and the loss on made-up tensors runs as written."""
    blocks = re.findall(r"^```python\n(.*?)^```", README, re.M | re.S)
    snippet = [b for b in blocks if "token_hidden_reward(" in b]
    assert len(snippet) == 1
    scope: dict = {}
    exec(compile(snippet[0], "README.md", "exec"), scope)
    thr, adv_tok, logp = scope["thr"], scope["adv_tok"], scope["logp"]
    assert thr.shape == adv_tok.shape == logp.shape == scope["mask"].shape
    assert logp.grad is not None and bool((logp.grad[scope["mask"] == 0] == 0).all())


def test_methods_page_names_every_variant():
    """docs/methods.md documents every name thrlab.core.variants lets a config choose."""
    from thrlab.core.variants import FAMILIES

    text = (ROOT / "docs" / "methods.md").read_text()
    missing = [f"{f.field}={n}" for f in FAMILIES for n in f.names() if f"`{n}`" not in text
               and f"{f.field}={n}" not in text]
    assert not missing, f"docs/methods.md does not name: {missing}"


def test_variants_table_is_the_registry():
    from thrlab.core.variants import FAMILIES

    text = (ROOT / "docs" / "methods.md").read_text().split("## Every variant name")[1]
    rows = re.findall(r"^\| `(\w+)` \| `(\w+)` \| (.+?) \|$", text, re.M)
    assert rows == [(f.field, n, f.describe(n)) for f in FAMILIES for n in f.names()]
