"""Write docs/experiments.md from a folder of experiment results (NAME.json + NAME.png).

    qkv experiment NAME --out DIR          # for each experiment (add --quick for the small runs)
    python scripts/experiments_doc.py DIR  # copies the plots to docs/experiments/ and writes the page

The page states each claim, the verdict rule, the checks with their numbers,
the verdict, and the experiment's own summary, as the run wrote them.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ORDER = ("bottleneck", "scaling", "positional", "heads", "efficiency", "kv-cache", "pruning", "coreference")


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


def main(folder: Path) -> None:
    out_dir = ROOT / "docs" / "experiments"
    out_dir.mkdir(parents=True, exist_ok=True)
    found = {p.stem: json.loads(p.read_text()) for p in folder.glob("*.json")}
    lines = [
        "# Experiments",
        "",
        "Each claim about attention from the texts qkv started from, tested by a run anyone can repeat:",
        "`qkv experiment NAME [--quick] [--out DIR]` writes `DIR/NAME.json` and `DIR/NAME.png`.",
        "Verdicts are computed from the measured numbers by the rule written below each claim;",
        "a claim that does not hold is reported as such. The numbers here are from the runs named in",
        "each section (size, seed, threads); rerun them to check.",
        "",
        "| experiment | claim | verdict | run |",
        "|---|---|---|---|",
    ]
    names = [n for n in ORDER if n in found] + sorted(set(found) - set(ORDER))
    for name in names:
        d = found[name]
        verdict = "holds" if d["verdict"] else "**not supported**"
        lines.append(f"| [{name}](#{name}) | {d['claim']} | {verdict} | {d['size']}, {d['runtime_s']:.0f} s |")
    for name in names:
        d = found[name]
        png = folder / f"{name}.png"
        if png.exists():
            shutil.copy(png, out_dir / png.name)
        lines += [
            "",
            f"## {name}",
            "",
            f"**Claim.** {d['claim']}",
            "",
            f"**Rule.** {d['criterion']}",
            "",
            f"**Verdict: {'the claim holds' if d['verdict'] else 'not supported by this run'}** "
            f"({d['size']} run, seed {d['seed']}, {d['num_threads']} threads, torch {d['torch_version']}, "
            f"{d['runtime_s']:.0f} s; rerun: `qkv experiment {name}{' --quick' if d['size'] == 'quick' else ''}`).",
            "",
            "| check | value | threshold | passed |",
            "|---|---|---|---|",
        ]
        for check, c in d.get("checks", {}).items():
            lines.append(f"| {check} | {_fmt(c['value'])} | {_fmt(c['threshold'])} | {'yes' if c['passed'] else 'no'} |")
        lines += ["", d["summary"], ""]
        if png.exists():
            lines.append(f"![{name}](experiments/{png.name})")
    (ROOT / "docs" / "experiments.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {ROOT / 'docs' / 'experiments.md'} ({len(names)} experiments)")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "qkv-experiments"))
