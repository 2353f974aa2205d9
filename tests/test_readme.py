"""The README's tables of presets and methods against the code they describe (presets.PRESETS,
presets.METHODS): a recipe or preset changed in one place and not the other fails here."""
import re
from pathlib import Path

from thrlab.train.config import Config, _coerce
from thrlab.train.presets import METHODS, PRESETS, preset_config

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def table(header: str) -> list[list[str]]:
    """The body rows of the Markdown table whose header row starts with `header`, as cells."""
    lines = README[README.index(header):].splitlines()
    rows = []
    for line in lines[2:]:  # header, |---| separator
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def names(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def test_presets_table_is_the_config():
    rows = table("| preset | model | LoRA r / alpha |")
    testbed = {n for row in table("| preset | task | what narrows") for n in names(row[0])}
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
    rows = table("| method | overrides | what it does |")
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
