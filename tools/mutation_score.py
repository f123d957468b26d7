"""Print the mutation score of each module from the last `mutmut run` (docs/testing.md).

    python tools/mutation_score.py            # every module mutmut has results for
    python tools/mutation_score.py --survivors  # and the name of each surviving mutant

Reads mutmut's own record (mutants/**/*.py.meta) and its own names for exit codes, so the figures
are the ones `mutmut results` and `mutmut browse` show. A module's score is killed over checked:
mutants caught by a test (or by a timeout, which a test run that never ends also is) over every
mutant that ran. Mutants that no unit test reaches ("no tests") count against the score.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from mutmut.stats import status_by_exit_code

KILLED = {"killed", "timeout", "caught by type check"}


def scores(root: Path) -> dict[str, Counter[str]]:
    by_module: dict[str, Counter[str]] = {}
    for meta in sorted(root.glob("**/*.py.meta")):
        module = meta.relative_to(root).as_posix().removesuffix(".py.meta").replace("/", ".")
        codes = json.loads(meta.read_text(encoding="utf-8"))["exit_code_by_key"]
        counts = Counter(status_by_exit_code[code] for code in codes.values())
        if counts and set(counts) != {"not checked"}:
            by_module[module] = counts
    return by_module


def survivors(root: Path, module: str) -> list[str]:
    meta = root / (module.replace(".", "/") + ".py.meta")
    codes = json.loads(meta.read_text(encoding="utf-8"))["exit_code_by_key"]
    return sorted(k for k, v in codes.items() if status_by_exit_code[v] in {"survived", "no tests"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mutants", type=Path, default=Path("mutants"))
    parser.add_argument("--survivors", action="store_true", help="name every surviving mutant")
    args = parser.parse_args()
    table = scores(args.mutants)
    if not table:
        raise SystemExit(f"no mutmut results under {args.mutants}/: run `mutmut run` first")
    print("| module | killed | survived | no tests | not checked | score |")
    print("|---|---:|---:|---:|---:|---:|")
    for module, counts in table.items():
        killed = sum(counts[s] for s in KILLED)
        checked = killed + counts["survived"] + counts["no tests"] + counts["suspicious"]
        score = f"{100 * killed / checked:.1f}%" if checked else "-"
        print(
            f"| {module} | {killed} | {counts['survived']} | {counts['no tests']} "
            f"| {counts['not checked']} | {score} |"
        )
    if args.survivors:
        for module in table:
            for name in survivors(args.mutants, module):
                print(name)


if __name__ == "__main__":
    main()
