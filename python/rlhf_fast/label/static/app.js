// The labelling page: one pair at a time, choices by click or key (1, 2, 3, s; u undoes).
// All text goes in through textContent, so a prompt holding HTML shows as text.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const NAME_KEY = "rlhf_fast_label_annotator";
  const KEYS = { "1": "left", "2": "right", "3": "tie", s: "skip", S: "skip" };
  let annotator = localStorage.getItem(NAME_KEY) || "";
  let current = null; // the pair on screen
  let busy = false; // one request at a time: a second key press waits for the first answer

  // The token (when the server asked for one) is now in a cookie: keep it out of the history.
  if (new URLSearchParams(location.search).has("token")) history.replaceState(null, "", "/");

  function say(message, isError = false) {
    $("status").textContent = message;
    $("status").classList.toggle("error", isError);
  }

  async function api(path, body) {
    const init = body === undefined ? {} : {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    };
    const response = await fetch(path, init);
    const data = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(data.error || `HTTP ${response.status}`);
    return data;
  }

  function show(state) {
    current = state.pair;
    const { pairs, yours } = state.progress;
    $("progress").textContent = `${yours} / ${pairs} done`;
    $("progress").dataset.done = String(yours);
    $("who").textContent = `labelling as ${annotator} (change)`;
    $("task").hidden = current === null;
    $("done").hidden = current !== null;
    if (current !== null) {
      $("prompt").textContent = current.prompt;
      $("left").textContent = current.left;
      $("right").textContent = current.right;
      document.body.dataset.pair = current.pair_id;
    } else {
      delete document.body.dataset.pair;
    }
  }

  async function run(action, message) {
    if (busy) return;
    busy = true;
    document.querySelectorAll("button[data-choice], #undo").forEach((b) => { b.disabled = true; });
    try {
      const state = await action();
      show(state);
      say(message(state));
    } catch (error) {
      say(error.message, true);
    } finally {
      busy = false;
      document.querySelectorAll("button[data-choice], #undo").forEach((b) => { b.disabled = false; });
    }
  }

  const LABELS = { left: "A is better", right: "B is better", tie: "tie", skip: "skipped" };

  function choose(choice) {
    if (current === null) return;
    const pair = current;
    run(() => api("/api/choice", { annotator, pair_id: pair.pair_id, choice }),
      () => `Saved: ${LABELS[choice]}.`);
  }

  function undo() {
    run(() => api("/api/undo", { annotator }),
      (state) => (state.undone === null ? "Nothing to undo." : "Undone: choose again."));
  }

  function start() {
    $("name-form").hidden = true;
    run(() => api(`/api/next?annotator=${encodeURIComponent(annotator)}`), () => "");
  }

  function askName() {
    $("task").hidden = true;
    $("done").hidden = true;
    $("name-form").hidden = false;
    $("name-input").value = annotator;
    $("name-input").focus();
  }

  $("name-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const name = $("name-input").value.trim();
    if (!name) return;
    annotator = name;
    localStorage.setItem(NAME_KEY, name);
    start();
  });
  $("who").addEventListener("click", askName);
  document.querySelectorAll("button[data-choice]").forEach((button) => {
    button.addEventListener("click", () => choose(button.dataset.choice));
  });
  $("undo").addEventListener("click", undo);
  document.addEventListener("keydown", (event) => {
    if (event.target instanceof HTMLInputElement || event.ctrlKey || event.metaKey || event.altKey) return;
    if (!$("name-form").hidden) return;
    if (KEYS[event.key]) {
      event.preventDefault();
      choose(KEYS[event.key]);
    } else if (event.key === "u" || event.key === "U") {
      event.preventDefault();
      undo();
    }
  });

  if (annotator) start(); else askName();
})();
