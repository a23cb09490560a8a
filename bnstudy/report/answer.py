"""The README's answer, rendered from the published reports (`make reference`), so that it
cannot drift from them.

    python -m bnstudy.report.answer README.md results/reference notebook default momentum activation

replaces the text between ANSWER_START and ANSWER_END in README.md with, per study, a link
to its report and the bullets of its "## Summary" section (which bnstudy.report.render renders
from claims.csv). Nothing else in the file changes; the write is atomic.
"""

from __future__ import annotations

import sys
from pathlib import Path

from bnstudy.errors import UserError
from bnstudy.results.store import atomic_write_text

ANSWER_START = "<!-- answer: rendered by `make reference` from results/reference/*/report.md; do not edit -->"
ANSWER_END = "<!-- end of answer -->"


def summary_bullets(report_md: str) -> list[str]:
    """The "- " lines of a report's "## Summary" section."""
    if "## Summary\n" not in report_md:
        raise UserError("a report without a Summary section (made by an older bnstudy?)")
    section = report_md.split("## Summary\n", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("- ")]


def render_answer(reference: Path, studies: list[str], link_base: str) -> str:
    """The answer block: per study a heading line with its report's link, then its bullets."""
    parts = [ANSWER_START]
    for study in studies:
        report = reference / study / "report.md"
        if not report.is_file():
            raise UserError(f"{report}: no such report (run the study's sweep, then `make reference`)")
        parts += ["", f"**[{study}]({link_base}/{study}/report.md)**", "", *summary_bullets(report.read_text())]
    return "\n".join([*parts, "", ANSWER_END])


def replace_answer(readme: str, answer: str) -> str:
    """`readme` with the text from ANSWER_START to ANSWER_END replaced by `answer`."""
    if readme.count(ANSWER_START) != 1 or readme.count(ANSWER_END) != 1:
        raise UserError("README.md must hold the answer markers exactly once each")
    before, rest = readme.split(ANSWER_START)
    _, after = rest.split(ANSWER_END)
    return before + answer + after


def main(argv: list[str]) -> int:
    readme, reference, *studies = argv
    path = Path(readme)
    try:
        answer = render_answer(Path(reference), studies, Path(reference).as_posix())
        atomic_write_text(path, replace_answer(path.read_text(), answer))
    except UserError as exc:
        print(f"bnstudy: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote the answer of {', '.join(studies)} into {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
