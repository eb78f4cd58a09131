"""Write docs/experiments.md from a folder of experiment results (NAME.json + NAME.png).

    qkv experiment NAME --out DIR          # for each experiment (add --quick for the small runs)
    python scripts/experiments_doc.py DIR  # copies the plots to docs/experiments/ and writes the page

The page states each claim, the verdict rule (and, where the rule was changed
after seeing data, the experiment's note saying so), the checks with their
numbers, the verdict (holds, not supported, or inconclusive), and the
experiment's own summary, as the run wrote them. Each section says which run
its numbers come from: date, size (a quick run is marked as such), seed,
threads, runtime. An experiment with no JSON in DIR keeps its section from the
current page, marked as not rerun.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ORDER = ("bottleneck", "scaling", "positional", "heads", "efficiency", "kv-cache", "pruning", "coreference")
PAGE = ROOT / "docs" / "experiments.md"


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


def _verdict(value: object) -> tuple[str, str]:
    """(table cell, section heading) for a verdict."""
    if value is True:
        return "holds", "the claim holds"
    if value is False:
        return "**not supported**", "not supported by this run"
    return "*inconclusive*", "inconclusive: the evidence does not decide the claim"


def _passed(value: object) -> str:
    return {True: "yes", False: "no"}.get(value, "undecided")  # type: ignore[arg-type]


def _run_line(d: dict) -> str:
    size = d["size"] + (
        " (the small run: numbers are indicative, not the publishable ones)" if d["size"] == "quick" else ""
    )
    date = d.get("date") or "date not recorded"
    return (
        f"**Run:** {date}, {size} run, seed {d['seed']}, {d['num_threads']} threads, torch {d['torch_version']}, "
        f"{d['runtime_s']:.0f} s; rerun: `qkv experiment {d['name']}{' --quick' if d['size'] == 'quick' else ''}`."
    )


def _old_sections() -> dict[str, str]:
    """The current page's sections by experiment name (kept for experiments not rerun)."""
    if not PAGE.exists():
        return {}
    text = PAGE.read_text()
    parts = re.split(r"\n## ", text)
    return {part.split("\n", 1)[0].strip(): part.split("\n", 1)[1] for part in parts[1:]}


def main(folder: Path) -> None:
    out_dir = ROOT / "docs" / "experiments"
    out_dir.mkdir(parents=True, exist_ok=True)
    found = {}
    for path in folder.glob("*.json"):
        d = json.loads(path.read_text())
        found[d.get("name", path.stem)] = d
    old = _old_sections()
    lines = [
        "# Experiments",
        "",
        "Each claim about attention from the texts qkv started from, tested by a run anyone can repeat:",
        "`qkv experiment NAME [--quick] [--out DIR]` writes `DIR/NAME.json` and `DIR/NAME.png`.",
        "Verdicts are computed from the measured numbers by the rule written below each claim:",
        "a claim holds, is not supported, or is *inconclusive* where the controls or the noise margins",
        "do not decide it (a timing part is decided only when the 90% interval of its repeated,",
        "interleaved measurements lies wholly on one side of the threshold). A rule changed after its",
        "author saw data says so in its section (and in the JSON's `rule_changed`). Each section names",
        "the run its numbers come from; rerun it to check.",
        "",
        "| experiment | claim | verdict | run |",
        "|---|---|---|---|",
    ]
    names = [n for n in ORDER if n in found or n in old] + sorted(set(found) - set(ORDER))
    for name in names:
        if name in found:
            d = found[name]
            date = (d.get("date") or "")[:10]
            lines.append(
                f"| [{name}](#{name}) | {d['claim']} | {_verdict(d['verdict'])[0]} | "
                f"{d['size']}, {date}, {d['runtime_s']:.0f} s |"
            )
        else:
            lines.append(f"| [{name}](#{name}) | see below | not rerun for this page | earlier run |")
    for name in names:
        if name not in found:
            body = old[name].rstrip("\n")
            note = (
                "> **Not rerun for this page.** This section is kept from the earlier page; its numbers come "
                "from the earlier run it names, under the code and rule of that time."
            )
            lines += ["", f"## {name}", "", note, body.lstrip("\n") if body.startswith("\n") else "\n" + body]
            continue
        d = found[name]
        png = folder / f"{name}.png"
        if png.exists():
            shutil.copy(png, out_dir / png.name)
        lines += ["", f"## {name}", ""]
        if d.get("rule_changed"):
            lines += [f"> **Rule changed after seeing data.** {d['rule_changed']}", ""]
        lines += [
            f"**Claim.** {d['claim']}",
            "",
            f"**Rule.** {d['criterion']}",
            "",
            f"**Verdict: {_verdict(d['verdict'])[1]}.** " + _run_line(d),
            "",
            "| check | value | threshold | passed |",
            "|---|---|---|---|",
        ]
        for check, c in d.get("checks", {}).items():
            lines.append(f"| {check} | {_fmt(c['value'])} | {_fmt(c['threshold'])} | {_passed(c['passed'])} |")
        lines += ["", d["summary"], ""]
        if png.exists():
            lines.append(f"![{name}](experiments/{png.name})")
    PAGE.write_text("\n".join(lines) + "\n")
    print(f"wrote {PAGE} ({len(names)} experiments, {len(found)} from {folder})")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "qkv-experiments"))
