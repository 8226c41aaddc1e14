"""Dataset readers and validators (train_jobs.datasets): pure Python, no platform needed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from train_jobs.datasets import DatasetInvalid, RowError, Sample, read_dataset, validate_dataset


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows),
                    encoding="utf-8")
    return path


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


# --- Alpaca -------------------------------------------------------------------------------------------------------

def test_alpaca_rows_become_conversations(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [
        {"instruction": "计算这些物品的数量之和。 ", "input": "输入：汽车 - 3", "output": "3"},
        {"instruction": "Say hi", "output": "hi", "system": "Be brief.", "history": [["q1", "a1"]]},
        {"instruction": "No input", "input": "", "output": "ok", "extra": "ignored"},
    ])
    assert read_dataset(path, "alpaca") == [
        Sample(messages=[user("计算这些物品的数量之和。 \n输入：汽车 - 3"), assistant("3")]),
        Sample(messages=[{"role": "system", "content": "Be brief."}, user("q1"), assistant("a1"),
                         user("Say hi"), assistant("hi")]),
        Sample(messages=[user("No input"), assistant("ok")]),
    ]


def test_alpaca_blank_lines_are_ignored_and_line_numbers_count_them(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", ["", {"instruction": "i", "output": "o"}, "   ", {"instruction": "i"}])
    assert validate_dataset(path, "alpaca") == [RowError(line=4, field="output", reason="Field required")]


def test_alpaca_reports_every_bad_row(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [
        {"instruction": "fine", "output": "fine"},
        "{bad json",
        {"instruction": "  ", "output": 3},
        [1, 2],
        {"instruction": "i", "output": "o", "history": [["q", "a", "extra"], ["q", ""]]},
        {"instruction": "i", "output": "o", "input": 5, "system": ["x"]},
    ])
    assert validate_dataset(path, "alpaca") == [
        RowError(line=2, field="line", reason="Invalid JSON: key must be a string at column 2"),
        RowError(line=3, field="instruction", reason="must not be empty"),
        RowError(line=3, field="output", reason="Input should be a valid string"),
        RowError(line=4, field="line", reason="Input should be an object"),
        RowError(line=5, field="history[0]", reason="Tuple should have at most 2 items after validation, not 3"),
        RowError(line=5, field="history[1][1]", reason="must not be empty"),
        RowError(line=6, field="input", reason="Input should be a valid string"),
        RowError(line=6, field="system", reason="Input should be a valid string"),
    ]
    with pytest.raises(DatasetInvalid) as raised:
        read_dataset(path, "alpaca")
    assert len(raised.value.errors) == 8
    assert str(raised.value).splitlines()[:3] == [
        "dataset is invalid (8 errors):",
        "  line 2, line: Invalid JSON: key must be a string at column 2",
        "  line 3, instruction: must not be empty",
    ]


def test_alpaca_accepts_a_json_array_as_in_the_manual(tmp_path):
    path = tmp_path / "a.json"
    path.write_text('[\n  {"instruction": "i", "output": "o"},\n  {"instruction": "i",\n   "output": ""}\n]\n')
    assert validate_dataset(path, "alpaca") == [RowError(line=3, field="output", reason="must not be empty")]


# --- continued pre-training -----------------------------------------------------------------------------------------

def test_pretrain_text_rows(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"text": "doc one"}, {"text": "doc two", "source": "x"}])
    assert read_dataset(path, "alpaca", kind="pretrain") == [Sample(text="doc one"), Sample(text="doc two")]


def test_pretrain_json_array_and_its_errors(tmp_path):
    path = tmp_path / "p.json"
    path.write_text('[\n {"text": "document"},\n {"text": ""},\n {"txt": "x"}\n]')
    assert validate_dataset(path, "alpaca", kind="pretrain") == [
        RowError(line=3, field="text", reason="must not be empty"),
        RowError(line=4, field="text", reason="Field required"),
    ]
    path.write_text('[{"text": "a"}]')
    assert read_dataset(path, "alpaca", kind="pretrain") == [Sample(text="a")]


@pytest.mark.parametrize(("content", "error"), [
    ('[{"text": "a"},\n{"text": ', RowError(line=2, field="line", reason="Invalid JSON: Expecting value at column 10")),
    ('[{"text": "a"} {"text": "b"}]',
     RowError(line=1, field="line", reason="Invalid JSON: expected ',' or ']' after an element")),
    ('[{"text": "a"}]\n{"text": "b"}', RowError(line=2, field="line", reason="unexpected content after the JSON array")),
    ("[ ]", RowError(line=0, field="file", reason="the file is empty")),
])
def test_broken_json_array(tmp_path, content, error):
    path = tmp_path / "p.json"
    path.write_text(content)
    assert validate_dataset(path, "alpaca", kind="pretrain") == [error]


# --- file-level errors -------------------------------------------------------------------------------------------

def test_empty_file(tmp_path):
    path = tmp_path / "e.jsonl"
    path.write_text("\n  \n")
    assert validate_dataset(path, "alpaca") == [RowError(line=0, field="file", reason="the file is empty")]
    with pytest.raises(DatasetInvalid):
        read_dataset(path, "alpaca")


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_dataset(tmp_path / "nope.jsonl", "alpaca")


def test_unknown_format_and_kind(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "i", "output": "o"}])
    assert validate_dataset(path, "parquet") == [RowError(
        line=0, field="format", reason="unknown format 'parquet'; expected one of moss, alpaca, sharegpt, csv, xlsx")]
    assert validate_dataset(path, "alpaca", kind="rlhf") == [
        RowError(line=0, field="kind", reason="unknown kind 'rlhf'; expected one of sft, pretrain")]
