"""Data loaders: both preference forms, every source kind, every validation error."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from rlhf_fast.data import (
    DataValidationError,
    PreferencePair,
    SFTExample,
    drop_too_long,
    load_preference_pairs,
    load_prompts,
    load_sft_examples,
)
from rlhf_fast.errors import InvalidArgumentError

PAIRS = [
    {"prompt": "Review the mug.", "chosen": "Great mug!", "rejected": "Bad mug."},
    {"prompt": "Review the lamp.", "chosen": "Lovely lamp.", "rejected": "Awful lamp."},
]
CANDIDATES = [
    {
        "prompt": "Review the mug.",
        "candidate_0": "Bad mug.",
        "candidate_1": "Great mug!",
        "choice": 1,
    },
    {
        "prompt": "Review the lamp.",
        "candidate_0": "Lovely lamp.",
        "candidate_1": "Awful lamp.",
        "choice": 0,
    },
]
EXPECTED = [
    PreferencePair("Review the mug.", "Great mug!", "Bad mug."),
    PreferencePair("Review the lamp.", "Lovely lamp.", "Awful lamp."),
]


def write_jsonl(path: Path, records: list) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_parquet(path: Path, records: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(records), path)
    return path


# ----------------------------------------------------------------- both forms
@pytest.mark.parametrize("records", [PAIRS, CANDIDATES], ids=["chosen_rejected", "candidates"])
@pytest.mark.parametrize("kind", ["list", "jsonl", "json_array", "parquet", "dataset"])
def test_preference_pairs_every_source_and_form(tmp_path, records, kind):
    if kind == "list":
        source = records
    elif kind == "jsonl":
        source = write_jsonl(tmp_path / "pairs.jsonl", records)
    elif kind == "json_array":
        source = tmp_path / "pairs.json"
        source.write_text(json.dumps(records))
    elif kind == "parquet":
        source = write_parquet(tmp_path / "pairs.parquet", records)
    else:
        datasets = pytest.importorskip("datasets")
        source = datasets.Dataset.from_list(records)
    pairs = load_preference_pairs(source)
    assert pairs == EXPECTED
    assert pairs.report.n_loaded == 2 and pairs.report.n_skipped == 0


def test_pandas_dataframe_with_numpy_ints():
    pandas = pytest.importorskip("pandas")
    frame = pandas.DataFrame(CANDIDATES)
    assert load_preference_pairs(frame) == EXPECTED
    frame.loc[1, "choice"] = 3
    with pytest.raises(DataValidationError, match=r"<DataFrame>: row 1: field 'choice'"):
        load_preference_pairs(frame)


def test_numpy_integer_choice_is_an_int_but_numpy_bool_is_not():
    import numpy as np

    assert load_preference_pairs([dict(CANDIDATES[0], choice=np.int64(1))])[0] == EXPECTED[0]
    with pytest.raises(DataValidationError, match=r"expected 0 or 1 \(int\), got .*\(bool_?\)"):
        load_preference_pairs([dict(CANDIDATES[0], choice=np.bool_(True))])


def test_forms_can_mix_and_extra_fields_are_ignored():
    records = [dict(PAIRS[0], id=7), dict(CANDIDATES[1], annotator="a3")]
    assert load_preference_pairs(records) == EXPECTED


def test_blank_lines_are_not_records(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n" + json.dumps(PAIRS[0]) + "\n   \n" + json.dumps(PAIRS[1]) + "\n\n")
    assert load_preference_pairs(path) == EXPECTED


# ---------------------------------------------------------- validation errors
BAD_RECORDS = [
    # (record or raw line, field named in the message, words in the reason)
    ({"prompt": "p", "chosen": "a"}, "rejected", "missing"),
    ({"chosen": "a", "rejected": "b"}, "prompt", "missing"),
    ({"prompt": "p"}, "chosen", "missing"),
    ({"prompt": "p", "candidate_0": "a", "choice": 0}, "candidate_1", "missing"),
    ({"prompt": "p", "candidate_0": "a", "candidate_1": "b"}, "choice", "missing"),
    ({"prompt": "p", "chosen": 3, "rejected": "b"}, "chosen", "expected a string, got 3 (int)"),
    ({"prompt": None, "chosen": "a", "rejected": "b"}, "prompt", "expected a string"),
    (
        {"prompt": "p", "candidate_0": "a", "candidate_1": "b", "choice": 2},
        "choice",
        "expected 0 or 1",
    ),
    ({"prompt": "p", "candidate_0": "a", "candidate_1": "b", "choice": True}, "choice", "(bool)"),
    ({"prompt": "p", "candidate_0": "a", "candidate_1": "b", "choice": 1.0}, "choice", "(float)"),
    ({"prompt": "p", "candidate_0": "a", "candidate_1": "b", "choice": "1"}, "choice", "(str)"),
    ({"prompt": "p", "chosen": "", "rejected": "b"}, "chosen", "empty text"),
    ({"prompt": "  ", "chosen": "a", "rejected": "b"}, "prompt", "empty text"),
    ('{"prompt": "p", "chosen": "a",', None, "invalid JSON"),
    ("[1, 2]", None, "expected an object with named fields, got list"),
]


@pytest.mark.parametrize(("bad", "field", "reason"), BAD_RECORDS)
def test_jsonl_error_names_file_line_and_field(tmp_path, bad, field, reason):
    path = write_jsonl(tmp_path / "pairs.jsonl", [PAIRS[0], PAIRS[1], bad])
    with pytest.raises(DataValidationError) as info:
        load_preference_pairs(path)
    message = str(info.value)
    assert message.startswith(f"{path}: line 3: ")
    assert reason in message
    if field is not None:
        assert f"field {field!r}" in message
    assert (info.value.unit, info.value.index, info.value.field) == ("line", 3, field)
    assert isinstance(info.value, InvalidArgumentError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("bad", "field", "reason"), [b for b in BAD_RECORDS if isinstance(b[0], dict)]
)
def test_list_error_names_row_and_field(bad, field, reason):
    with pytest.raises(DataValidationError, match=rf"^<list>: row 1: field '{field}': .*") as info:
        load_preference_pairs([PAIRS[0], bad])
    assert reason in str(info.value)


def test_parquet_error_names_file_row_and_field(tmp_path):
    records = [dict(CANDIDATES[0]), dict(CANDIDATES[1]), dict(CANDIDATES[0], choice=5)]
    path = write_parquet(tmp_path / "pairs.parquet", records)
    with pytest.raises(
        DataValidationError, match=r"pairs\.parquet: row 2: field 'choice': expected 0 or 1"
    ):
        load_preference_pairs(path)


def test_dataset_error_names_row_and_field():
    datasets = pytest.importorskip("datasets")
    dataset = datasets.Dataset.from_list([PAIRS[0], dict(PAIRS[1], rejected="")])
    with pytest.raises(
        DataValidationError, match=r"<Dataset>: row 1: field 'rejected': empty text"
    ):
        load_preference_pairs(dataset)


def test_skip_invalid_counts_and_logs(tmp_path, caplog):
    path = write_jsonl(
        tmp_path / "pairs.jsonl",
        [
            PAIRS[0],
            {"prompt": "p", "chosen": ""},
            "not json",
            PAIRS[1],
            dict(CANDIDATES[0], choice=-1),
        ],
    )
    with caplog.at_level(logging.WARNING, logger="rlhf_fast.data"):
        pairs = load_preference_pairs(path, skip_invalid=True)
    assert pairs == EXPECTED
    assert (pairs.report.n_loaded, pairs.report.n_skipped) == (2, 3)
    assert [e.split(": ")[1] for e in pairs.report.errors] == ["line 2", "line 3", "line 5"]
    assert "skipped 3 preference pair record(s) of 5 (3 invalid)" in caplog.text
    assert pairs.report.skipped == {"invalid": 3}
    assert pairs.places == [1, 4]  # the kept records' lines


def test_all_invalid_or_empty_is_an_error(tmp_path):
    with pytest.raises(InvalidArgumentError, match="no valid preference pair records .2 skipped"):
        load_preference_pairs([{"x": 1}, {"y": 2}], skip_invalid=True)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(InvalidArgumentError, match="empty source"):
        load_preference_pairs(empty)


def test_bad_sources(tmp_path):
    with pytest.raises(InvalidArgumentError, match="no such file"):
        load_prompts(tmp_path / "missing.jsonl")
    (tmp_path / "data.csv").write_text("prompt\nhi\n")
    with pytest.raises(InvalidArgumentError, match="unknown file type '.csv'"):
        load_prompts(tmp_path / "data.csv")
    with pytest.raises(InvalidArgumentError, match="got int"):
        load_prompts(3)
    with pytest.raises(InvalidArgumentError, match="pick a split"):
        load_prompts(type("DatasetDict", (dict,), {})(train=[]))


# ------------------------------------------------------------ prompts and SFT
def test_load_prompts_field_and_plain_strings(tmp_path):
    path = write_jsonl(tmp_path / "prompts.jsonl", [{"query": "a"}, {"query": "b", "other": 1}])
    assert load_prompts(path, field="query") == ["a", "b"]
    assert load_prompts(["x", "y"]) == ["x", "y"]
    with pytest.raises(DataValidationError, match=r"line 2: field 'prompt': missing"):
        load_prompts(write_jsonl(tmp_path / "p2.jsonl", [{"prompt": "a"}, {"query": "b"}]))
    kept = load_prompts([{"prompt": "a"}, {"prompt": ""}, {"prompt": 1}], skip_invalid=True)
    assert kept == ["a"] and kept.report.n_skipped == 2


def test_load_sft_examples_forms_and_errors(tmp_path):
    path = write_jsonl(
        tmp_path / "sft.jsonl",
        [
            {"prompt": "Q:", "response": " A"},
            {"text": "plain text"},
            {"prompt": "", "response": "r"},
        ],
    )
    assert load_sft_examples(path) == [
        SFTExample("Q:", " A"),
        SFTExample("", "plain text"),
        SFTExample("", "r"),
    ]
    with pytest.raises(DataValidationError, match=r"row 0: field 'response': missing"):
        load_sft_examples([{"prompt": "Q:"}])
    with pytest.raises(DataValidationError, match=r"row 0: field 'response': missing .*or text"):
        load_sft_examples([{"body": "x"}])
    with pytest.raises(DataValidationError, match=r"row 0: field 'text': empty text"):
        load_sft_examples([{"text": " "}])
    with pytest.raises(DataValidationError, match=r"row 0: field 'response': expected a string"):
        load_sft_examples([{"prompt": "Q", "response": ["a"]}])


def test_unreadable_parquet_is_reported(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1 not really")
    with pytest.raises(InvalidArgumentError, match=r"broken\.parquet: not a readable Parquet file"):
        load_preference_pairs(path)


# ------------------------------------------------------------- bytes and duplicates
def test_invalid_utf8_names_file_and_line(tmp_path):
    path = tmp_path / "pairs.jsonl"
    good = json.dumps(PAIRS[0]).encode()
    path.write_bytes(good + b"\n" + b'{"prompt": "caf\xff"}\n' + json.dumps(PAIRS[1]).encode())
    with pytest.raises(DataValidationError, match=r"pairs.jsonl: line 2: invalid UTF-8: byte 0xff"):
        load_preference_pairs(path)
    pairs = load_preference_pairs(path, skip_invalid=True)
    assert pairs == EXPECTED and pairs.report.skipped == {"invalid": 1}
    array = tmp_path / "pairs.json"  # a JSON array: the whole file is one document
    array.write_bytes(b"[\n" + good + b",\n" + b'{"prompt": "\xc3"}\n]')
    with pytest.raises(DataValidationError, match=r"pairs.json: line 3: invalid UTF-8: byte 0xc3"):
        load_preference_pairs(array)


def test_utf8_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"prompt": "caf\u00e9"}).encode() + b"\n")
    assert load_prompts(path) == ["caf\u00e9"]


def test_identical_pairs_are_skipped_and_counted_or_an_error(tmp_path, caplog):
    same = {"prompt": "p", "chosen": "Same.", "rejected": "Same."}
    same_candidates = {"prompt": "p", "candidate_0": "x", "candidate_1": "x", "choice": 1}
    path = write_jsonl(tmp_path / "pairs.jsonl", [PAIRS[0], same, PAIRS[1], same_candidates])
    with caplog.at_level(logging.WARNING, logger="rlhf_fast.data"):
        pairs = load_preference_pairs(path)
    assert pairs == EXPECTED and pairs.places == [1, 3]
    assert (pairs.report.n_skipped, pairs.report.skipped) == (2, {"identical pair": 2})
    assert "(2 identical pair)" in caplog.text
    with pytest.raises(
        DataValidationError, match=r"line 2: field 'rejected': the same text as the chosen"
    ):
        load_preference_pairs(path, identical="error")
    with pytest.raises(InvalidArgumentError, match="identical: expected 'skip' or 'error'"):
        load_preference_pairs(path, identical="warn")


def test_drop_too_long_names_the_place_and_the_limit(tmp_path):
    path = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": w} for w in ("a", "bbb", "cc")])
    prompts = load_prompts(path)
    with pytest.raises(
        DataValidationError,
        match=r"prompts.jsonl: line 2: field 'prompt': 3 tokens, more than the 2 the context",
    ):
        drop_too_long(prompts, map(len, prompts), 2, field="prompt", why="the context allows")
    kept = drop_too_long(
        prompts, map(len, prompts), 2, field="prompt", why="the context allows", skip_invalid=True
    )
    assert kept == ["a", "cc"] and kept.places == [1, 3]
    assert (kept.report.n_loaded, kept.report.skipped) == (2, {"too long": 1})
    with pytest.raises(InvalidArgumentError, match="every one is longer than 0 tokens"):
        drop_too_long(prompts, map(len, prompts), 0, field="prompt", why="x", skip_invalid=True)
