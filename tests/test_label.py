"""rlhf-fast label: the preference file, resume and undo, the statistics, and the HTTP API
against a real server (uvicorn on a free loopback port). The page itself in a browser:
``test_label_browser.py``."""

from __future__ import annotations

import http.client
import json
import threading
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlsplit

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from rlhf_fast.data import DataValidationError, load_preference_pairs  # noqa: E402
from rlhf_fast.errors import InvalidArgumentError  # noqa: E402
from rlhf_fast.label import LabelConfig, prepare_pairs  # noqa: E402
from rlhf_fast.label.pairs import Pair, load_pairs, pair_id_of  # noqa: E402
from rlhf_fast.label.server import MAX_BODY_BYTES, LabelServer, create_app  # noqa: E402
from rlhf_fast.label.stats import cohen_kappa, label_stats, wilson_interval  # noqa: E402
from rlhf_fast.label.store import (  # noqa: E402
    AlreadyJudgedError,
    Judgement,
    PreferenceStore,
    UnknownPairError,
    swapped_for,
)

STATIC = Path(__file__).parent.parent / "python" / "rlhf_fast" / "label" / "static"


def make_pairs(n: int = 6) -> list[Pair]:
    pairs = []
    for i in range(n):
        texts = (f"review the kettle {i} :", f"a fine kettle {i}", f"a poor kettle {i}")
        pairs.append(Pair(pair_id_of(*texts), *texts))
    return pairs


def lines_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ------------------------------------------------------------------------ pairs
def test_load_pairs_ids_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    path.write_text(
        json.dumps({"prompt": "p", "candidate_0": "a", "candidate_1": "b", "pair_id": "x-1"})
        + "\n\n"
        + json.dumps({"prompt": "q", "candidate_0": "a", "candidate_1": "b"})
        + "\n"
    )
    pairs = load_pairs(path)
    assert [p.pair_id for p in pairs] == ["x-1", pair_id_of("q", "a", "b")]
    assert load_pairs(path) == pairs  # ids without a pair_id field are stable

    cases = {
        '{"prompt": "p", "candidate_0": "a"}': "line 1: field 'candidate_1': missing",
        '{"prompt": "p", "candidate_0": "a", "candidate_1": "a"}': "the same text",
        '{"prompt": "p", "candidate_0": "a", "candidate_1": "b", "pair_id": "../x"}': "pair_id",
        "[1]": "expected an object",
        "{oops": "invalid JSON",
    }
    for line, message in cases.items():
        path.write_text(line + "\n")
        with pytest.raises(DataValidationError, match=message.replace("(", r"\(")):
            load_pairs(path)
    path.write_text('{"prompt": "p", "candidate_0": "a", "candidate_1": "b", "pair_id": "d"}\n' * 2)
    with pytest.raises(DataValidationError, match="line 2: field 'pair_id': 'd' already used"):
        load_pairs(path)


def test_prepare_pairs_samples_once_and_reuses(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "".join(json.dumps({"prompt": f"review item {i} :"}) + "\n" for i in range(4))
    )
    config = LabelConfig(
        prompts=str(prompts),
        policy="tiny-gpt2",
        tokenizer="bytes",
        out=str(tmp_path / "prefs.jsonl"),
        max_new_tokens=8,
        device="cpu",
    )
    first = prepare_pairs(config)
    assert 1 <= len(first) <= 4
    assert all(p.candidate_0 != p.candidate_1 for p in first)
    assert (tmp_path / "prefs.pairs.jsonl").is_file()
    config.seed = 1  # another seed would sample other answers: the saved ones are used instead
    assert prepare_pairs(config) == first
    with pytest.raises(InvalidArgumentError, match="--pairs FILE, or --prompts FILE and --policy"):
        prepare_pairs(LabelConfig(out=str(tmp_path / "other.jsonl")))


# ------------------------------------------------------------------------ store
def test_records_are_train_reward_input_and_ties_are_two_records(tmp_path: Path) -> None:
    pairs = make_pairs(4)
    out = tmp_path / "prefs.jsonl"
    with PreferenceStore(out, pairs) as store:
        store.record("ana", pairs[0].pair_id, "left")
        store.record("ana", pairs[1].pair_id, "right")
        store.record("ana", pairs[2].pair_id, "tie")
        store.record("ana", pairs[3].pair_id, "skip")
    records = lines_of(out)
    assert len(records) == 4  # left, right, the two halves of the tie; the skip is elsewhere
    for record in records:
        assert set(record) >= {
            "prompt",
            "candidate_0",
            "candidate_1",
            "choice",
            "annotator",
            "time",
            "pair_id",
        }
        pair = next(p for p in pairs if p.pair_id == record["pair_id"])
        # candidate_0 is what ana saw on the left
        swapped = swapped_for(pair.pair_id, "ana")
        assert record["candidate_0"] == (pair.candidate_1 if swapped else pair.candidate_0)
    assert [r["choice"] for r in records] == [0, 1, 0, 1]
    assert [r.get("tie", False) for r in records] == [False, False, True, True]
    assert lines_of(tmp_path / "prefs.skips.jsonl")[0]["pair_id"] == pairs[3].pair_id

    loaded = load_preference_pairs(out)  # what train-reward reads
    assert len(loaded) == 4
    assert loaded[0].chosen == records[0]["candidate_0"]
    assert loaded[1].chosen == records[1]["candidate_1"]
    assert {loaded[2].chosen, loaded[3].chosen} == {pairs[2].candidate_0, pairs[2].candidate_1}


def test_resume_undo_and_no_pair_twice(tmp_path: Path) -> None:
    pairs = make_pairs(5)
    out = tmp_path / "prefs.jsonl"
    with PreferenceStore(out, pairs) as store:
        seen = []
        for verdict in ("left", "skip", "tie"):
            pair = store.next_pair("ana")
            assert store.next_pair("ana") == pair  # a reload shows the same pair
            seen.append(pair.pair_id)
            store.record("ana", pair.pair_id, verdict)
        with pytest.raises(AlreadyJudgedError):
            store.record("ana", seen[0], "right")
        with pytest.raises(UnknownPairError):
            store.record("ana", "no-such-pair", "left")
        assert store.next_pair("bo").pair_id == seen[1]  # the skipped pair has no label yet
    assert seen == [p.pair_id for p in pairs[:3]]

    with PreferenceStore(out, pairs) as store:  # a restart
        assert [j.verdict for j in store.judgements()] == ["left", "skip", "tie"]
        assert store.next_pair("ana").pair_id == pairs[3].pair_id
        undone = store.undo("ana")
        assert undone is not None and undone.verdict == "tie"
        assert store.next_pair("ana").pair_id == seen[2]  # undone: shown again
        assert len(lines_of(out)) == 1
        assert store.undo("ana").verdict == "skip"
        assert lines_of(tmp_path / "prefs.skips.jsonl") == []
        store.record("ana", seen[1], "right")
        assert store.undo("nobody") is None
    with PreferenceStore(out, pairs) as store:
        assert [(j.pair_id, j.verdict) for j in store.judgements()] == [
            (seen[0], "left"),
            (seen[1], "right"),
        ]
        for _ in range(3):
            pair = store.next_pair("ana")
            store.record("ana", pair.pair_id, "left")
        assert store.next_pair("ana") is None
        assert store.count_of("ana") == 5


def test_a_torn_last_line_is_dropped_and_a_bad_line_is_named(tmp_path: Path) -> None:
    pairs = make_pairs(3)
    out = tmp_path / "prefs.jsonl"
    with PreferenceStore(out, pairs) as store:
        store.record("ana", pairs[0].pair_id, "left")
        store.record("ana", pairs[1].pair_id, "tie")
    text = out.read_text()
    lines = text.splitlines(keepends=True)
    out.write_text(lines[0] + lines[1] + lines[2][:20])  # a crash inside the tie's write
    with PreferenceStore(out, pairs) as store:
        assert [j.verdict for j in store.judgements()] == ["left"]
    assert out.read_text() == lines[0]
    assert load_preference_pairs(out)  # still valid input

    out.write_text(lines[0] + "{not json}\n" + lines[0])
    with pytest.raises(DataValidationError, match="prefs.jsonl: line 2: invalid JSON"):
        PreferenceStore(out, pairs)
    out.write_text(lines[0] + lines[0])
    with pytest.raises(InvalidArgumentError, match="judged twice"):
        PreferenceStore(out, pairs)
    out.write_text(lines[0])
    with pytest.raises(DataValidationError, match="not among the pairs being labelled"):
        PreferenceStore(out, make_pairs(3)[1:])


def test_one_server_per_file(tmp_path: Path) -> None:
    pairs = make_pairs(2)
    with PreferenceStore(tmp_path / "prefs.jsonl", pairs):
        with pytest.raises(InvalidArgumentError, match="in use by another rlhf-fast label"):
            PreferenceStore(tmp_path / "prefs.jsonl", pairs)
    PreferenceStore(tmp_path / "prefs.jsonl", pairs).close()


# ------------------------------------------------------------------------ stats
def test_cohen_kappa_and_wilson() -> None:
    # A textbook table: 20 yes/yes, 5 yes/no, 10 no/yes, 15 no/no -> p_o 0.7, p_e 0.5, kappa 0.4.
    a = ["y"] * 25 + ["n"] * 25
    b = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    assert cohen_kappa(a, a) == pytest.approx(1.0)
    assert cohen_kappa([], []) is None
    assert cohen_kappa(["y", "y"], ["y", "y"]) is None  # chance agreement 1: undefined
    low, high = wilson_interval(50, 100)
    assert low == pytest.approx(0.4038, abs=1e-4) and high == pytest.approx(0.5962, abs=1e-4)


def test_label_stats() -> None:
    def j(pair: str, who: str, verdict: str, swapped: bool = False) -> Judgement:
        return Judgement(pair, who, verdict, swapped, "t")

    judgements = [
        j("p1", "ana", "left"),
        j("p1", "bo", "right", swapped=True),  # the same answer, seen on the other side
        j("p2", "ana", "tie"),
        j("p2", "bo", "tie"),
        j("p3", "ana", "left"),
        j("p3", "bo", "right"),
        j("p4", "bo", "skip"),
    ]
    s = label_stats(judgements, n_pairs=5)
    assert s["progress"] == {"pairs": 5, "labelled": 3, "labelled_twice": 3, "judgements": 7}
    assert s["annotators"]["bo"] == {"total": 4, "left": 0, "right": 2, "tie": 1, "skip": 1}
    # winners: p1 0/0, p2 tie/tie, p3 0/1 -> p_o 2/3; p_e = (2*1 + 1*1 + 0*1) / 9 = 1/3
    assert s["agreement"]["kappa"] == pytest.approx(0.5)
    assert s["agreement"]["by_annotators"] == [
        {"annotators": ["ana", "bo"], "n_pairs": 3, "kappa": 0.5}
    ]
    assert s["position_bias"]["n_decisive"] == 4
    assert s["position_bias"]["left_win_rate"] == 0.5


# ----------------------------------------------------------------------- server
class Client:
    """A tiny HTTP client over http.client, so paths go out exactly as written."""

    def __init__(self, url: str) -> None:
        self.netloc = urlsplit(url).netloc

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        headers: Optional[dict[str, str]] = None,
        raw: Optional[bytes] = None,
    ) -> tuple[int, Any, http.client.HTTPResponse]:
        connection = http.client.HTTPConnection(self.netloc, timeout=10)
        headers = dict(headers or {})
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
            headers.setdefault("Content-Type", "application/json")
        connection.request(method, path, body=data, headers=headers)
        response = connection.getresponse()
        payload = response.read()
        connection.close()
        is_json = response.getheader("content-type", "").startswith("application/json")
        return response.status, json.loads(payload) if is_json else payload, response

    def get(self, path: str, **kw: Any) -> tuple[int, Any, http.client.HTTPResponse]:
        return self.request("GET", path, **kw)

    def post(
        self, path: str, body: Any = None, **kw: Any
    ) -> tuple[int, Any, http.client.HTTPResponse]:
        return self.request("POST", path, body, **kw)


@pytest.fixture
def served(tmp_path: Path):
    pairs = make_pairs(6)
    store = PreferenceStore(tmp_path / "prefs.jsonl", pairs)
    with LabelServer(create_app(store), "127.0.0.1", 0) as server:
        yield Client(server.url), store, pairs
    store.close()


def test_api_labels_and_undoes(served) -> None:
    client, store, pairs = served
    status, state, response = client.get("/api/next?annotator=ana")
    assert status == 200 and state["progress"] == {"pairs": 6, "yours": 0}
    assert "default-src 'self'" in response.getheader("content-security-policy")
    shown = state["pair"]
    status, state, _ = client.post(
        "/api/choice", {"annotator": "ana", "pair_id": shown["pair_id"], "choice": "left"}
    )
    assert status == 200 and state["saved"]["choice"] == "left"
    assert state["progress"]["yours"] == 1 and state["pair"]["pair_id"] != shown["pair_id"]
    record = lines_of(store.out)[0]
    assert (record["candidate_0"], record["choice"]) == (shown["left"], 0)
    status, state, _ = client.post("/api/undo", {"annotator": "ana"})
    assert status == 200 and state["undone"] == shown["pair_id"] and state["pair"] == shown
    assert lines_of(store.out) == []
    status, stats, _ = client.get("/api/stats")
    assert status == 200 and stats["progress"]["pairs"] == 6
    for path in ("/", "/stats", "/static/app.js", "/static/stats.js", "/static/style.css"):
        status, body, _ = client.get(path)
        assert status == 200 and len(body) > 100, path


def test_api_bad_input_is_a_json_4xx_and_the_file_stays_valid(served) -> None:
    client, store, pairs = served
    pid = pairs[0].pair_id
    ok = {"annotator": "ana", "pair_id": pid, "choice": "right"}
    assert client.post("/api/choice", ok)[0] == 200
    cases = [
        (client.post("/api/choice", {**ok, "pair_id": "nope"}), 404, "unknown pair"),
        (client.post("/api/choice", ok), 409, "already judged"),  # a replayed submission
        (client.post("/api/choice", {**ok, "choice": "both"}), 400, "choice"),
        (client.post("/api/choice", {**ok, "annotator": ""}), 400, "annotator"),
        (client.post("/api/choice", {**ok, "annotator": "a\nb"}), 400, "annotator"),
        (client.post("/api/choice", {**ok, "extra": 1}), 400, "unexpected field"),
        (client.post("/api/choice", {**ok, "pair_id": 3}), 400, "pair_id"),
        (client.post("/api/choice", [ok]), 400, "expected a JSON object"),
        (
            client.post(
                "/api/choice", raw=b"{'annotator':", headers={"Content-Type": "application/json"}
            ),
            400,
            "not valid JSON",
        ),
        (
            client.post(
                "/api/choice", raw=b"\xff\xfe", headers={"Content-Type": "application/json"}
            ),
            400,
            "not valid JSON",
        ),
        (
            client.post(
                "/api/choice",
                raw=b"x" * (MAX_BODY_BYTES + 1),
                headers={"Content-Type": "application/json"},
            ),
            413,
            "too large",
        ),
        (
            client.post(
                "/api/choice", raw=json.dumps(ok).encode(), headers={"Content-Type": "text/plain"}
            ),
            415,
            "application/json",
        ),
        (client.get("/api/next"), 400, "annotator"),
        (client.get("/api/choice"), 405, ""),
        (client.get("/static/../store.py"), 404, "no such file"),
        (client.get("/static/..%2F__init__.py"), 404, "no such file"),
        (client.get("/static/%2e%2e/%2e%2e/pyproject.toml"), 404, "no such file"),
        (client.get("/../../etc/passwd"), 404, "not found"),
        (client.get("/index.html"), 404, "not found"),
        (client.get("/api/stats", headers={"Host": "attacker.example"}), 400, "loopback"),
    ]
    for (status, body, _), expected_status, message in cases:
        assert status == expected_status, body
        assert isinstance(body, dict) and message in body["error"], body
    records = lines_of(store.out)
    assert len(records) == 1 and load_preference_pairs(store.out)


def test_a_body_without_length_is_capped(served) -> None:
    client, _, _ = served
    connection = http.client.HTTPConnection(client.netloc, timeout=10)
    connection.putrequest("POST", "/api/choice")
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Transfer-Encoding", "chunked")
    connection.endheaders()
    chunk = b"x" * 8192
    for _ in range(4):
        connection.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
    connection.send(b"0\r\n\r\n")
    response = connection.getresponse()
    assert response.status == 413 and "too large" in json.loads(response.read())["error"]
    connection.close()


def test_concurrent_annotators_never_corrupt_the_file(tmp_path: Path) -> None:
    pairs = make_pairs(30)
    store = PreferenceStore(tmp_path / "prefs.jsonl", pairs)
    errors: list[Any] = []
    with LabelServer(create_app(store), "127.0.0.1", 0) as server:
        client = Client(server.url)

        def annotate(name: str) -> None:
            verdicts = ["left", "right", "tie", "skip"]
            for i in range(30):
                status, state, _ = client.get(f"/api/next?annotator={name}")
                if state["pair"] is None:
                    break
                status, body, _ = client.post(
                    "/api/choice",
                    {
                        "annotator": name,
                        "pair_id": state["pair"]["pair_id"],
                        "choice": verdicts[i % 4],
                    },
                )
                if status != 200:
                    errors.append(body)

        threads = [threading.Thread(target=annotate, args=(f"a{k}",)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    store.close()
    assert errors == []
    records = lines_of(tmp_path / "prefs.jsonl")  # every line parses
    keys = [(r["pair_id"], r["annotator"]) for r in records if not r.get("tie")]
    assert len(keys) == len(set(keys))
    assert len(load_preference_pairs(tmp_path / "prefs.jsonl")) == len(records)
    with PreferenceStore(tmp_path / "prefs.jsonl", pairs) as reopened:
        assert len(reopened.judgements()) == 4 * 30


def test_a_token_is_required_off_loopback(tmp_path: Path) -> None:
    store = PreferenceStore(tmp_path / "prefs.jsonl", make_pairs(2))
    app = create_app(store, token="s3cret", loopback=False)
    with LabelServer(app, "127.0.0.1", 0) as server:
        client = Client(server.url)
        status, body, _ = client.get("/api/stats")
        assert status == 401 and "token" in body["error"]
        assert client.get("/api/stats", headers={"X-Label-Token": "wrong"})[0] == 401
        assert client.get("/api/stats", headers={"X-Label-Token": "s3cret"})[0] == 200
        status, _, response = client.get("/?token=s3cret")
        assert status == 200
        cookie = response.getheader("set-cookie")
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert client.get("/api/stats", headers={"Cookie": cookie.split(";")[0]})[0] == 200
    store.close()


def test_pages_never_insert_html() -> None:
    # Text reaches the page through textContent only; the HTML escaping of <script> in a
    # prompt is checked in a real browser by test_label_browser.py.
    for name in ("app.js", "stats.js"):
        source = (STATIC / name).read_text()
        assert "textContent" in source
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
            assert sink not in source, (name, sink)


def test_cli_lists_label() -> None:
    from rlhf_fast.cli import COMMANDS

    assert COMMANDS["label"].load()[0] is LabelConfig


def test_the_command_serves_until_ctrl_c_and_prints_a_summary(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    from rlhf_fast.label.pairs import save_pairs

    save_pairs(tmp_path / "pairs.jsonl", make_pairs(3))
    command = [sys.executable, "-m", "rlhf_fast.cli", "label", "--pairs", "pairs.jsonl"]
    command += ["--out", "prefs.jsonl", "--host", "0.0.0.0", "--port", "0"]
    process = subprocess.Popen(
        command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        url = token = None
        for line in process.stdout:  # the start-up lines, printed before serving
            if "open http://" in line:
                url, token = line.split("open ")[1].strip().split("/?token=")
                break
        assert url and token, process.stderr.read()
        port = url.rsplit(":", 1)[1]
        client = Client(f"http://127.0.0.1:{port}")
        assert client.get("/api/stats")[0] == 401  # listening beyond loopback: token required
        status, state, _ = client.get("/api/next?annotator=ana", headers={"X-Label-Token": token})
        assert status == 200
        body = {"annotator": "ana", "pair_id": state["pair"]["pair_id"], "choice": "left"}
        assert client.post("/api/choice", body, headers={"X-Label-Token": token})[0] == 200
        process.send_signal(signal.SIGINT)
        rest, errors = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    assert process.returncode == 0, errors
    summary = json.loads(rest[rest.index("{") :])
    assert summary["stage"] == "label" and summary["annotators"]["ana"]["left"] == 1
    assert len(lines_of(tmp_path / "prefs.jsonl")) == 1
