"""The report of a ``stablenca diagnose`` output directory, from the records alone.

Reading (:mod:`.runs`, through :mod:`stablenca.artifacts`) is apart from rendering:
:mod:`.figures` draws the PNGs, :mod:`.sections` turns the runs into one language-free
:class:`.markdown.Doc`, and :mod:`.markdown` renders it with the English
(:mod:`.messages_en`) and the Chinese (:mod:`.messages_zh`) catalogue. Nothing is retrained.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from .. import artifacts
from ..records import atomic_write_text
from .figures import FIGURES_DIR, Figure, draw_figures, figure_jobs, problems_of
from .markdown import Doc, Prose, fmt, placeholders
from .markdown import render as render_markdown
from .messages_en import EN
from .messages_zh import ZH
from .runs import load_check, load_run_set
from .sections import extract
from .teaching_figures import teaching_jobs
from .tracer_zh import translate as translate_zh

#: Language → (catalogue, file name, how the parts of a paragraph are joined).
LANGUAGES = {"en": (EN, "report.md", " "), "zh": (ZH, "report.zh.md", "")}
REPORT_NAMES = {lang: name for lang, (_, name, _) in LANGUAGES.items()}
MESSAGES = {lang: messages for lang, (messages, _, _) in LANGUAGES.items()}
#: Language → how the tracer's and checker's English prose (:class:`.markdown.Prose`) is translated.
TRANSLATORS = {"zh": translate_zh}

__all__ = ["EN", "LANGUAGES", "MESSAGES", "REPORT_NAMES", "TRANSLATORS", "ZH", "Doc", "Prose", "build_report", "extract", "fmt",
           "placeholders", "render"]


def render(doc: Doc, lang: str) -> str:
    """The Markdown of ``doc`` in ``lang`` ("en" or "zh")."""
    messages, _, joiner = LANGUAGES[lang]
    return render_markdown(doc, messages, joiner=joiner, translate=TRANSLATORS.get(lang))


#: Studies (``stablenca study`` outputs) next to a diagnose directory, answered in the report when present.
STUDIES = ("study.json", "factors_student/study.json", "factors_modernnca/study.json")


def _studies(out: Path) -> list[tuple[str, dict]]:
    """The studies in ``out``'s parent directory, as (path relative to ``out``, study) pairs."""
    from ..study.run import load_study

    found = []
    for name in STUDIES:
        path = out.parent / name
        if path.is_file():
            found.append((f"../{name[:-len('.json')]}.md", load_study(path)))
    return found


def build_report(out_dir: str | Path, check_path: str | Path | None = None, *,
                 drawn: Mapping[str, Figure | str] | None = None) -> list[Path]:
    """Draw the figures and write ``report.md`` and ``report.zh.md`` into ``out_dir``.

    Reads only what ``stablenca diagnose`` recorded (and ``check_path``, default
    ``out_dir/check.json`` when present). Returns the written paths, figures first.
    ``drawn``: figures already drawn from the same records, by name (see
    :func:`.figures.draw_figures`); the others are drawn here, all in one pool.
    """
    out = Path(out_dir)
    run_set = load_run_set(out)
    if check_path is None:
        check_path = artifacts.check_path(out)
    check = load_check(check_path) if check_path is not None else None
    jobs, check_problems = figure_jobs(out, check_path, run_set=run_set, strict=False)
    teaching = teaching_jobs(out, run_set.runs)
    outcomes = draw_figures(jobs + teaching, out / FIGURES_DIR, strict=False, drawn=drawn)
    problems = problems_of(outcomes[:len(jobs)]) + check_problems + problems_of(outcomes[len(jobs):])
    figures = [o for o in outcomes if isinstance(o, Figure)]
    doc = extract(run_set, figures, check, problems, studies=_studies(out))
    written = [f.path for f in figures]
    for lang, (_, name, _) in LANGUAGES.items():
        atomic_write_text(out / name, render(doc, lang))
        written.append(out / name)
    return written
