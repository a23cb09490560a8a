"""bnstudy.report.answer: the README's answer is the published reports' summaries, and nothing
else in the README changes."""

from __future__ import annotations

from pathlib import Path

import pytest

from bnstudy.report import answer
from bnstudy.errors import UserError

ROOT = Path(__file__).resolve().parents[2]


def test_the_answer_is_each_reports_summary(tmp_path):
    for study, bullets in (("one", ["- **a** +1.0 pp", "- **b** no clear difference"]), ("two", ["- **c**"])):
        (tmp_path / study).mkdir()
        (tmp_path / study / "report.md").write_text("# Study\n\n## Summary\n\n" + "\n".join(bullets) +
                                                    "\n\n![fig](figures/x.png)\n\n## What was run\n\n- **Grid**: x\n")
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{answer.ANSWER_START}\nold\n{answer.ANSWER_END}\nrest\n")
    assert answer.main([str(readme), str(tmp_path), "one", "two"]) == 0
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("\nrest\n") and "old" not in text
    block = text.split(answer.ANSWER_START)[1].split(answer.ANSWER_END)[0]
    assert [line for line in block.splitlines() if line.startswith("- ")] == [
        "- **a** +1.0 pp", "- **b** no clear difference", "- **c**"]
    assert "Grid" not in block and f"({tmp_path.as_posix()}/two/report.md)" in block


def test_a_missing_report_or_marker_is_one_error(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("no markers\n")
    with pytest.raises(UserError):
        answer.replace_answer(readme.read_text(), "x")
    assert answer.main([str(readme), str(tmp_path), "absent"]) == 2
    assert capsys.readouterr().err.count("\n") == 1 and readme.read_text() == "no markers\n"


def test_the_committed_readme_answer_is_the_committed_reports():
    readme = (ROOT / "README.md").read_text()
    block = readme.split(answer.ANSWER_START)[1].split(answer.ANSWER_END)[0]
    studies = [line.split("[")[1].split("]")[0] for line in block.splitlines() if line.startswith("**[")]
    assert studies, "the README has no rendered answer"
    expected = answer.render_answer(ROOT / "results" / "reference", studies, "results/reference")
    assert answer.ANSWER_START + block + answer.ANSWER_END == expected


@pytest.mark.parametrize("study", sorted(p.name for p in (ROOT / "results" / "reference").iterdir() if p.is_dir()))
def test_each_published_report_reads_as_promised(study):
    """The answer first, short paragraphs, comparisons as a table, no claim that prints as
    0.0 pp, no notebook section that compares nothing; every claim a row of claims.csv."""
    import re

    import pandas as pd

    folder = ROOT / "results" / "reference" / study
    text = (folder / "report.md").read_text()
    assert re.findall(r"^## (.+)$", text, flags=re.M)[0] == "Summary"
    for paragraph in re.split(r"\n(?=- )|\n\n", text):
        assert paragraph.startswith("|") or len(paragraph.split()) <= 120, paragraph[:80]
    assert "| compared | metric | n | mean (pp) |" in text
    claims = pd.read_csv(folder / "claims.csv")
    clear = claims[claims["verdict"].isin(["higher", "lower"])]
    assert (clear["mean"].abs() >= 0.0005).all() and (clear["p_adjusted"] < 0.05).all()
    if "## The reference notebook's test-accuracy swings" in text:
        assert "log A: bn_before" in text or "log B: bn_before" in text  # it compares something
    shown = [line for line in text.splitlines() if line.startswith("| ") and " − " in line]
    assert len(shown) == len(claims)
