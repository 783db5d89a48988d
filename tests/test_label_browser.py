"""The labelling page in a real browser: headless Chromium driven by selenium.

One annotator labels 20 pairs with clicks and keys (1, 2, 3, s; u undoes), the page is
reloaded half-way, a prompt holding ``<script>`` must show as text, then the JSONL is
checked record by record against what the page showed and a reward model is trained on it
with ``rlhf-fast train-reward``.

Needs Debian's ``chromium`` and ``chromium-driver`` (``make test-browser`` installs them) and
selenium; without them the test is skipped with the reason, or fails when
``RLHF_FAST_REQUIRE_BROWSER=1`` (what ``make test-browser`` sets). The driver is named
explicitly, so selenium never downloads one. Every wait has a timeout, and a watchdog ends
the run with a traceback if anything still hangs. ``RLHF_FAST_LABEL_SCREENSHOT=PATH`` saves
the README's screenshot of the page there.
"""

from __future__ import annotations

import faulthandler
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from rlhf_fast.label.pairs import Pair, pair_id_of, save_pairs  # noqa: E402

WATCHDOG_S = 240  # the whole test takes ~30 s on 2 cores; past this something hangs
WAIT_S = 15

PRODUCTS = [
    "kettle", "desk lamp", "backpack", "toaster", "headphones", "umbrella", "blender",
    "bike light", "office chair", "water bottle", "alarm clock", "tent", "keyboard",
    "rice cooker", "hiking boots", "phone case", "coffee grinder", "doormat", "scarf", "mug",
]  # fmt: skip
GOOD = "Great {p}: it does exactly what it should, feels solid and was easy to set up."
BAD = "The {p} is fine I guess. Broke after a week, and the box smelled odd."
SCRIPT_PROMPT = 'review the mug : <script>window.__pwned = 1</script><b>bold?</b> & "quotes"'


def _require_browser() -> tuple[str, str]:
    """Paths of Chromium and chromedriver, or skip (fail under RLHF_FAST_REQUIRE_BROWSER=1)."""
    reason = None
    chromium = next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p),
        None,
    )
    driver = shutil.which("chromedriver")
    try:
        import selenium  # noqa: F401
    except ImportError:
        reason = "selenium is not installed (pip install selenium, or make test-browser)"
    if reason is None and (chromium is None or driver is None):
        reason = (
            "no Chromium with chromedriver on PATH: apt-get install chromium chromium-driver "
            "(or make test-browser)"
        )
    if reason is not None:
        if os.environ.get("RLHF_FAST_REQUIRE_BROWSER") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return chromium, driver  # type: ignore[return-value]


def _pairs() -> list[Pair]:
    pairs = []
    for i, product in enumerate(PRODUCTS):
        prompt = SCRIPT_PROMPT if product == "mug" else f"review the {product} :"
        good, bad = GOOD.format(p=product), BAD.format(p=product)
        texts = (prompt, good, bad) if i % 2 else (prompt, bad, good)
        pairs.append(Pair(pair_id_of(*texts), *texts))
    return pairs


def _save_screenshot(driver: Any, path: Path) -> None:
    driver.save_screenshot(str(path))
    try:  # a 64-colour palette keeps the committed PNG small
        from PIL import Image

        with Image.open(path) as image:
            small = image.convert("RGB").quantize(colors=64)
        small.save(path, optimize=True)
    except ImportError:
        pass


@pytest.fixture
def watchdog():
    faulthandler.dump_traceback_later(WATCHDOG_S, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


def test_label_twenty_pairs_in_chromium(tmp_path: Path, watchdog: None, capsys: Any) -> None:
    chromium, chromedriver = _require_browser()
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from rlhf_fast.cli import main as cli_main
    from rlhf_fast.data import load_preference_pairs
    from rlhf_fast.label import LabelConfig, prepare_pairs
    from rlhf_fast.label.server import LabelServer, create_app
    from rlhf_fast.label.store import PreferenceStore

    t0 = time.monotonic()
    pairs_path, out = tmp_path / "pairs.jsonl", tmp_path / "prefs.jsonl"
    save_pairs(pairs_path, _pairs())
    pairs = prepare_pairs(LabelConfig(pairs=str(pairs_path), out=str(out)))
    store = PreferenceStore(out, pairs)
    server = LabelServer(create_app(store), "127.0.0.1", 0).start()

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",  # root in a container has no user namespace sandbox
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1040,620",
        "--hide-scrollbars",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        options.add_argument(arg)
    service = webdriver.ChromeService(
        executable_path=chromedriver, log_output=str(tmp_path / "chromedriver.log")
    )
    try:
        driver = webdriver.Chrome(service=service, options=options)
    except WebDriverException as exc:  # installed but unable to start (no /dev/shm, ...)
        server.stop()
        store.close()
        reason = f"Chromium is installed but did not start: {str(exc).splitlines()[0]}"
        if os.environ.get("RLHF_FAST_REQUIRE_BROWSER") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        driver.set_page_load_timeout(WAIT_S)
        driver.set_script_timeout(WAIT_S)
        wait = WebDriverWait(driver, WAIT_S)
        by_id = lambda name: driver.find_element(By.ID, name)  # noqa: E731

        def done_count() -> int:
            return int(by_id("progress").get_attribute("data-done") or -1)

        def wait_done(n: int) -> None:
            wait.until(lambda _: done_count() == n, f"progress never reached {n}")

        def on_screen() -> tuple[str, str, str, str]:
            return (
                driver.find_element(By.TAG_NAME, "body").get_attribute("data-pair"),
                by_id("prompt").text,
                by_id("left").text,
                by_id("right").text,
            )

        def press(key: str) -> None:
            ActionChains(driver).send_keys(key).perform()

        # First visit: the page asks for a name.
        driver.get(server.url + "/")
        wait.until(lambda _: by_id("name-form").is_displayed(), "no name form on first visit")
        by_id("name-input").send_keys("ana" + Keys.ENTER)
        wait_done(0)
        wait.until(lambda _: by_id("task").is_displayed(), "no pair shown")

        # (how, what): clicks on the buttons and key presses, with ties and skips among them.
        plan = [
            ("click", "pick-left"), ("key", "2"), ("click", "pick-right"), ("key", "1"),
            ("key", "3"), ("click", "pick-tie"), ("key", "s"), ("click", "pick-skip"),
            ("key", "1"), ("click", "pick-left"), ("key", "2"), ("key", "1"),
            ("click", "pick-right"), ("key", "2"), ("key", "3"), ("click", "pick-left"),
            ("key", "1"), ("key", "2"), ("click", "pick-right"), ("key", "1"),
        ]  # fmt: skip
        verdict_of = {
            "1": "left", "2": "right", "3": "tie", "s": "skip",
            "pick-left": "left", "pick-right": "right", "pick-tie": "tie", "pick-skip": "skip",
        }  # fmt: skip
        expected: dict[str, tuple[str, str, str, str]] = {}  # pair_id -> verdict, texts shown
        for step, (how, what) in enumerate(plan):
            pair_id, prompt, left, right = on_screen()
            assert pair_id not in expected, "a pair was shown twice"
            if step == 1:
                shot = os.environ.get("RLHF_FAST_LABEL_SCREENSHOT")
                _save_screenshot(driver, Path(shot) if shot else tmp_path / "page.png")
            if "<script>" in prompt:  # shown as text, not run
                assert prompt == SCRIPT_PROMPT
                assert driver.find_elements(By.CSS_SELECTOR, "#prompt *") == []
                assert driver.execute_script("return window.__pwned") is None
            if how == "click":
                by_id(what).click()
            else:
                press(what)
            wait_done(step + 1)
            expected[pair_id] = (verdict_of[what], prompt, left, right)

            if step == 4:  # undo with the key: the same pair comes back, chosen again
                press("u")
                wait_done(step)
                assert on_screen()[0] == pair_id
                by_id("undo").click()  # and once more with the button: the pair before it
                wait_done(step - 1)
                previous = on_screen()[0]
                assert expected[previous] and previous != pair_id
                by_id("pick-right").click()
                wait_done(step)
                expected[previous] = ("right", *expected[previous][1:])
                assert on_screen()[0] == pair_id
                press("1")
                wait_done(step + 1)
                expected[pair_id] = ("left", prompt, left, right)
            if step == 9:  # a reload half-way: same name, same progress, a new pair
                driver.refresh()
                wait_done(step + 1)
                assert by_id("name-form").is_displayed() is False
                assert on_screen()[0] not in expected
        wait.until(lambda _: by_id("done").is_displayed(), "no end message after 20 pairs")
        assert done_count() == 20

        driver.get(server.url + "/stats")
        wait.until(
            lambda _: "ana" in by_id("annotators").text and "20" in by_id("annotators").text,
            "the stats page does not list ana's 20 judgements",
        )
        assert "decisive choices" in by_id("bias-line").text
    finally:
        driver.quit()
        server.stop()
        store.close()

    # The file: one record per choice (two per tie), in the order and layout the page showed.
    records = [json.loads(line) for line in out.read_text().splitlines()]
    skips = [json.loads(line) for line in (tmp_path / "prefs.skips.jsonl").read_text().splitlines()]
    verdicts = [v for v, *_ in expected.values()]
    assert len(records) == verdicts.count("left") + verdicts.count("right") + 2 * verdicts.count(
        "tie"
    )
    assert sorted(s["pair_id"] for s in skips) == sorted(
        pid for pid, (v, *_) in expected.items() if v == "skip"
    )
    for record in records:
        verdict, prompt, left, right = expected[record["pair_id"]]
        assert (record["prompt"], record["candidate_0"], record["candidate_1"]) == (
            prompt,
            left,
            right,
        )
        assert record["annotator"] == "ana" and record["time"].endswith("Z")
        if verdict == "tie":
            assert record["tie"] is True
        else:
            assert record["choice"] == {"left": 0, "right": 1}[verdict]
    assert len(load_preference_pairs(out)) == len(records)

    # The file as it is feeds the reward trainer.
    code = cli_main(
        [
            "train-reward",
            "--model", "tiny-gpt2",
            "--data", str(out),
            "--output-dir", str(tmp_path / "rm"),
            "--max-steps", "4",
            "--batch-size", "8",
            "--device", "cpu",
        ]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0, printed
    summary = json.loads(printed[printed.rfind("\n{") + 1 :])
    assert summary["n_train_pairs"] + summary["n_eval_pairs"] == len(records)
    with capsys.disabled():
        print(
            f"\nbrowser test: 20 pairs labelled in Chromium, reward model trained, {time.monotonic() - t0:.1f} s"
        )
