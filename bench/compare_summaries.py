"""Compare two ``summary.json`` files of ``stablenca diagnose``: every number must be the same.

Timings, the machine, the command line and source paths are left out (they differ between two
runs of the same code, or after a module moves); so is the display of the chain (the schema
changed its shape: ``chain`` was text, now it is a list of links with ``chain_text`` beside it),
whose text is compared instead. Exit 0 when the rest is identical, 1 otherwise.

    python bench/compare_summaries.py BEFORE/summary.json AFTER/summary.json
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any

IGNORED = {"seconds", "train_seconds", "machine", "command", "source", "schema", "chain", "chain_str",
           "chain_text"}


def leaves(value: Any, path: str = "") -> dict[str, Any]:
    """``path -> value`` for every number and string below ``value`` (runs keyed by name)."""
    out: dict[str, Any] = {}
    if isinstance(value, dict):
        for key, item in value.items():
            if key not in IGNORED:
                out.update(leaves(item, f"{path}.{key}" if path else key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            label = item.get("run", i) if isinstance(item, dict) else i
            out.update(leaves(item, f"{path}[{label}]"))
    elif value is not None:
        out[path] = value
    return out


def chain_texts(summary: dict[str, Any]) -> dict[str, str | None]:
    texts = {}
    for run in summary.get("runs", []):
        first = run.get("first_nonfinite") or {}
        texts[run["run"]] = first.get("chain_text") or first.get("chain_str")
    return texts


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def compare(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    a, b = leaves(before), leaves(after)
    problems = [f"only before: {k} = {a[k]!r}" for k in sorted(a.keys() - b.keys())]
    problems += [f"only after: {k} = {b[k]!r}" for k in sorted(b.keys() - a.keys())]
    problems += [f"differs: {k}: {a[k]!r} -> {b[k]!r}" for k in sorted(a.keys() & b.keys()) if not same(a[k], b[k])]
    ta, tb = chain_texts(before), chain_texts(after)
    problems += [f"chain text differs: {run}" for run in ta if ta[run] != tb.get(run)]
    return problems


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    with open(argv[0], encoding="utf-8") as f, open(argv[1], encoding="utf-8") as g:
        before, after = json.load(f), json.load(g)
    problems = compare(before, after)
    numbers = sum(isinstance(v, (int, float)) and not isinstance(v, bool) for v in leaves(before).values())
    for line in problems:
        print(line)
    print(f"{'identical' if not problems else f'{len(problems)} differences'}: "
          f"{numbers} numbers compared apart from {', '.join(sorted(IGNORED))}")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
