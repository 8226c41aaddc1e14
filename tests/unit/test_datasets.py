"""Dataset readers and validators (train_jobs.datasets): pure Python, no platform needed."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import openpyxl
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
    ('[{"text": "a"}]\n{"text": "b"}',
     RowError(line=2, field="line", reason="unexpected content after the JSON array")),
    ("[ ]", RowError(line=0, field="file", reason="the file has no samples")),
])
def test_broken_json_array(tmp_path, content, error):
    path = tmp_path / "p.json"
    path.write_text(content)
    assert validate_dataset(path, "alpaca", kind="pretrain") == [error]


# --- MOSS ---------------------------------------------------------------------------------------------------------

def moss(conversation_id, *turns, **extra) -> dict:
    chat = {f"turn_{n}": {"Human": h, "MOSS": m} for n, (h, m) in enumerate(turns, start=1)}
    return {"conversation_id": conversation_id, "chat": chat, **extra}


def test_moss_turns_become_a_conversation(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [
        moss(1, ("h1", "m1"), ("h2", "m2")),
        moss(2, ("h", "m"), meta_instruction="You are MOSS.", num_turns=1),
        {"conversation_id": 3, "chat": {"turn_2": {"Human": "second", "MOSS": "b"},
                                        "turn_1": {"Human": "first", "MOSS": "a", "Inner Thoughts": "x"}}},
    ])
    assert read_dataset(path, "moss") == [
        Sample(messages=[user("h1"), assistant("m1"), user("h2"), assistant("m2")]),
        Sample(messages=[{"role": "system", "content": "You are MOSS."}, user("h"), assistant("m")]),
        Sample(messages=[user("first"), assistant("a"), user("second"), assistant("b")]),
    ]


def test_moss_errors(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [
        moss(1, ("h", "m")),
        moss("one", ("h", "m")),
        {"conversation_id": 2, "chat": {}},
        {"conversation_id": 3, "chat": {"turn_1": {"Human": "h"}, "turn_2": {"Human": " ", "MOSS": 7}}},
        moss(4, ("h", "m"), ("h", "m"), num_turns=3),
        {"conversation_id": 5, "chat": {"turn_1": {"Human": "h", "MOSS": "m"}, "turn_3": {"Human": "h", "MOSS": "m"}}},
        {"conversation_id": 6, "chat": {"first": {"Human": "h", "MOSS": "m"}}},
        {"chat": [["h", "m"]]},
    ])
    assert validate_dataset(path, "moss") == [
        RowError(line=2, field="conversation_id", reason="Input should be a valid integer"),
        RowError(line=3, field="chat", reason="Dictionary should have at least 1 item after validation, not 0"),
        RowError(line=4, field="chat.turn_1.MOSS", reason="Field required"),
        RowError(line=4, field="chat.turn_2.Human", reason="must not be empty"),
        RowError(line=4, field="chat.turn_2.MOSS", reason="Input should be a valid string"),
        RowError(line=5, field="num_turns", reason="is 3 but chat has 2 turns"),
        RowError(line=6, field="chat", reason="turns are numbered from turn_1 without gaps; missing turn_2"),
        RowError(line=7, field="chat.first", reason="turn keys are named turn_1, turn_2, ..."),
        RowError(line=8, field="conversation_id", reason="Field required"),
        RowError(line=8, field="chat", reason="Input should be an object"),
    ]


# --- ShareGPT -----------------------------------------------------------------------------------------------------

def said(*pairs: tuple[str, str]) -> list[dict]:
    return [{"from": role, "value": value} for role, value in pairs]


def test_sharegpt_roles_map_to_openai_roles(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [
        {"conversations": said(("human", "weather?"), ("function_call", '{"name": "w"}'),
                               ("observation", "sunny"), ("gpt", "It is sunny.")),
         "system": "Use tools.", "tools": '[{"name": "w"}]'},
        {"conversations": said(("human", "hi"), ("gpt", "hello"), ("human", "bye"), ("function", "f()"))},
    ])
    assert read_dataset(path, "sharegpt") == [
        Sample(messages=[{"role": "system", "content": "Use tools."}, user("weather?"),
                         assistant('{"name": "w"}'), {"role": "tool", "content": "sunny"}, assistant("It is sunny.")],
               tools='[{"name": "w"}]'),
        Sample(messages=[user("hi"), assistant("hello"), user("bye"), assistant("f()")]),
    ]


def test_sharegpt_role_positions_are_checked(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [
        {"conversations": said(("gpt", "a"), ("human", "b"), ("bot", "c"), ("observation", "d"))},
        {"conversations": said(("human", "a"), ("gpt", "b"), ("human", "c"))},
    ])
    assert validate_dataset(path, "sharegpt") == [
        RowError(line=1, field="conversations[0].from", reason="position 1 must be human or observation, found 'gpt'"),
        RowError(line=1, field="conversations[1].from",
                 reason="position 2 must be gpt, function_call or function, found 'human'"),
        RowError(line=1, field="conversations[2].from", reason="position 3 must be human or observation, found 'bot'"),
        RowError(line=1, field="conversations[3].from",
                 reason="position 4 must be gpt, function_call or function, found 'observation'"),
        RowError(line=2, field="conversations",
                 reason="must end with gpt or function_call at an even position, found 3 messages"),
    ]


def test_sharegpt_schema_errors(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [
        {"conversations": [{"value": "a"}, {"from": "gpt", "value": ""}]},
        {"conversations": []},
        {"system": 1, "tools": [{"name": "w"}]},
    ])
    assert validate_dataset(path, "sharegpt") == [
        RowError(line=1, field="conversations[0].from", reason="Field required"),
        RowError(line=1, field="conversations[1].value", reason="must not be empty"),
        RowError(line=2, field="conversations", reason="List should have at least 1 item after validation, not 0"),
        RowError(line=3, field="conversations", reason="Field required"),
        RowError(line=3, field="system", reason="Input should be a valid string"),
        RowError(line=3, field="tools", reason="Input should be a valid string"),
    ]


def test_sharegpt_json_array_as_in_the_manual(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps([{"conversations": said(("human", "q"), ("gpt", "a"))},
                                {"conversations": said(("gpt", "a"), ("human", "q"))}], indent=2))
    assert validate_dataset(path, "sharegpt") == [
        RowError(line=14, field="conversations[0].from", reason="position 1 must be human or observation, found 'gpt'"),
        RowError(line=14, field="conversations[1].from",
                 reason="position 2 must be gpt, function_call or function, found 'human'"),
    ]


# --- csv and xlsx -------------------------------------------------------------------------------------------------

TABLE = [
    ["conversation_id", "human", "assistant"],
    [1, "hi", "hello"],
    [2, "2+2?", "4"],
    [1, "how are you?", "fine"],
    [3, "only", "turn"],
    [2, "and 3+3?", "6"],
]
GROUPED = [
    Sample(messages=[user("hi"), assistant("hello"), user("how are you?"), assistant("fine")]),
    Sample(messages=[user("2+2?"), assistant("4"), user("and 3+3?"), assistant("6")]),
    Sample(messages=[user("only"), assistant("turn")]),
]


def write_csv(path: Path, rows: list[list], encoding: str = "utf-8") -> Path:
    with path.open("w", newline="", encoding=encoding) as file:
        csv.writer(file).writerows(rows)
    return path


def write_xlsx(path: Path, rows: list[list]) -> Path:
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    for row in rows:
        sheet.append(row)
    workbook.create_sheet("ignored").append(["conversation_id", "human", "assistant"])
    workbook.save(path)
    return path


@pytest.mark.parametrize("fmt", ["csv", "xlsx"])
def test_table_rows_sharing_an_id_form_one_conversation_in_file_order(tmp_path, fmt):
    path = (write_csv if fmt == "csv" else write_xlsx)(tmp_path / f"t.{fmt}", TABLE)
    assert read_dataset(path, fmt) == GROUPED


@pytest.mark.parametrize("fmt", ["csv", "xlsx"])
def test_table_errors_name_the_row(tmp_path, fmt):
    rows = [["Conversation_ID", "human", "assistant", "note"],
            [1, "fine", "fine", ""],
            [2, "", "answer", ""],
            [None, None, None, None],
            [0, "q", " ", "x"],
            ["abc", "q", "a", ""]]
    path = (write_csv if fmt == "csv" else write_xlsx)(tmp_path / f"t.{fmt}", rows)
    assert validate_dataset(path, fmt) == [
        RowError(line=3, field="human", reason="must not be empty"),
        RowError(line=5, field="conversation_id", reason="Input should be greater than 0"),
        RowError(line=5, field="assistant", reason="must not be empty"),
        RowError(line=6, field="conversation_id",
                 reason="Input should be a valid integer, unable to parse string as an integer"),
    ]


@pytest.mark.parametrize("fmt", ["csv", "xlsx"])
def test_table_missing_columns_is_one_error_on_the_header(tmp_path, fmt):
    path = (write_csv if fmt == "csv" else write_xlsx)(tmp_path / f"t.{fmt}", [["id", "human"], [1, ""], [2, "q"]])
    assert validate_dataset(path, fmt) == [
        RowError(line=1, field="header", reason="missing column(s) conversation_id, assistant; found id, human")]


@pytest.mark.parametrize("fmt", ["csv", "xlsx"])
def test_table_with_only_a_header_has_no_samples(tmp_path, fmt):
    path = (write_csv if fmt == "csv" else write_xlsx)(tmp_path / f"t.{fmt}", TABLE[:1])
    assert validate_dataset(path, fmt) == [RowError(line=0, field="file", reason="the file has no samples")]


def test_csv_multiline_cells_and_excel_bom(tmp_path):
    path = write_csv(tmp_path / "t.csv", [["conversation_id", "human", "assistant"], [1, "line one\nline two", "ok"],
                                          [2, "", "x"]], encoding="utf-8-sig")
    assert validate_dataset(path, "csv") == [RowError(line=3, field="human", reason="must not be empty")]
    path = write_csv(tmp_path / "t.csv", [["conversation_id", "human", "assistant"], [1, "多行\n问题", "回答"]],
                     encoding="utf-8-sig")
    assert read_dataset(path, "csv") == [Sample(messages=[user("多行\n问题"), assistant("回答")])]


def test_csv_in_a_legacy_code_page_is_one_error_at_the_first_bad_row(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes("conversation_id,human,assistant\n1,hi,hello\n2,你好,您好\n3,再见,再见\n".encode("gbk"))
    assert validate_dataset(path, "csv") == [
        RowError(line=3, field="file", reason="not UTF-8 text (invalid continuation byte); save the file as CSV UTF-8")]


def test_xlsx_that_is_not_a_workbook(tmp_path):
    path = tmp_path / "t.xlsx"
    path.write_text("conversation_id,human,assistant\n1,a,b\n")
    assert validate_dataset(path, "xlsx") == [
        RowError(line=0, field="file", reason="not a readable xlsx workbook: File is not a zip file")]


# --- file-level errors -------------------------------------------------------------------------------------------

def test_empty_file(tmp_path):
    path = tmp_path / "e.jsonl"
    path.write_text("\n  \n")
    assert validate_dataset(path, "alpaca") == [RowError(line=0, field="file", reason="the file has no samples")]
    with pytest.raises(DatasetInvalid) as raised:
        read_dataset(path, "alpaca")
    assert str(raised.value) == "dataset is invalid (1 error):\n  line 0, file: the file has no samples"


@pytest.mark.parametrize("fmt", ["moss", "alpaca", "sharegpt", "csv", "xlsx"])
def test_missing_file(tmp_path, fmt):
    with pytest.raises(FileNotFoundError):
        read_dataset(tmp_path / "nope", fmt)
    with pytest.raises(FileNotFoundError):
        validate_dataset(tmp_path / "nope", fmt)


def test_unknown_format_and_kind(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "i", "output": "o"}])
    assert validate_dataset(path, "parquet") == [RowError(
        line=0, field="format", reason="unknown format 'parquet'; expected one of moss, alpaca, sharegpt, csv, xlsx")]
    assert validate_dataset(path, "alpaca", kind="rlhf") == [
        RowError(line=0, field="kind", reason="unknown kind 'rlhf'; expected one of sft, pretrain")]


@pytest.mark.parametrize(("fmt", "kind"), [("moss", "pretrain"), ("sharegpt", "pretrain"), ("csv", "pretrain"),
                                           ("xlsx", "pretrain")])
def test_only_alpaca_supports_continued_pretraining(tmp_path, fmt, kind):
    path = write_jsonl(tmp_path / "p.jsonl", [{"text": "doc"}])
    assert validate_dataset(path, fmt, kind) == [
        RowError(line=0, field="format", reason=f"format '{fmt}' does not support 'pretrain' datasets")]


def test_a_100k_row_file_is_read_in_seconds_with_exact_line_numbers(tmp_path):
    rows = [{"instruction": f"question {i}", "input": "context", "output": f"answer {i}"} for i in range(100_000)]
    rows[99_999] = {"instruction": "last", "output": ""}
    path = write_jsonl(tmp_path / "big.jsonl", rows)
    started = time.perf_counter()
    errors = validate_dataset(path, "alpaca")
    assert time.perf_counter() - started < 30  # about 2 s here; a per-row re-scan of the file would take minutes
    assert errors == [RowError(line=100_000, field="output", reason="must not be empty")]
