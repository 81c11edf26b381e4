"""Predicting many files: folders and globs expand, an unreadable file is a row with its error and the rest go on,
and the rows are written as CSV or JSON lines."""

from __future__ import annotations

import csv
import json

import pytest
from helpers import make_tree

from gpuvision.errors import BadInput
from gpuvision.runtime import load
from gpuvision.runtime.predict import expand, predict_files, write_rows


@pytest.fixture
def photos(tmp_path):
    tree = make_tree(tmp_path / "photos", classes=("a", "b"), per_class=2, size=(8, 8))
    (tree / "a" / "notes.txt").write_text("not an image, not an image suffix")
    (tree / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n cut short")
    return tree


def test_files_folders_and_globs_expand_in_order(photos):
    found = expand([str(photos / "a" / "000.png"), str(photos / "b"), str(photos / "**" / "001.png"),
                    str(photos / "none-*.png"), str(photos / "missing.png"), str(photos / "a" / "notes.txt")])
    names = [(p.replace(str(photos) + "/", ""), e) for p, e in found]
    assert names == [("a/000.png", None), ("b/000.png", None), ("b/001.png", None), ("b/broken.png", None),
                     ("a/001.png", None), ("b/001.png", None), ("none-*.png", "no file matches this pattern"),
                     ("missing.png", "no such image file"), ("a/notes.txt", None)]  # named files are read as given


def test_a_bad_file_is_a_row_and_the_rest_are_predicted(tiny_model, photos, tmp_path):
    model = load(tiny_model, device="cpu")
    rows = list(predict_files(model, expand([str(photos), str(photos / "a" / "notes.txt")]), top_k=2, batch_size=2))
    assert [r["image"].rsplit("/", 1)[1] for r in rows] == ["000.png", "001.png", "000.png", "001.png",
                                                            "broken.png", "notes.txt"]
    assert [("error" in r) for r in rows] == [False] * 4 + [True, True]
    assert all(len(r["top"]) == 2 and r["top"][0]["probability"] >= r["top"][1]["probability"] for r in rows[:4])
    write_rows(rows, str(tmp_path / "p.csv"), top_k=2)
    table = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert list(table[0]) == ["image", "class", "probability", "class_2", "probability_2", "error"]
    assert table[0]["class"] == rows[0]["top"][0]["class"] and table[4]["error"].startswith("not an image")
    write_rows(rows, str(tmp_path / "p.jsonl"), top_k=2)
    assert [json.loads(line) for line in open(tmp_path / "p.jsonl")] == rows
    with pytest.raises(BadInput, match=".csv or a .jsonl"):
        write_rows(rows, str(tmp_path / "p.txt"), top_k=2)
