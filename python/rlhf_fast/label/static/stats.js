// The statistics page: /api/stats as tables, refreshed every 5 seconds.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const fmt = (x) => (x === null || x === undefined ? "n/a" : String(x));

  function row(cells) {
    const tr = document.createElement("tr");
    for (const cell of cells) {
      const td = document.createElement("td");
      td.textContent = fmt(cell);
      tr.appendChild(td);
    }
    return tr;
  }

  function render(s) {
    const p = s.progress;
    $("progress-line").textContent =
      `${p.labelled} of ${p.pairs} pairs labelled (${p.labelled_twice} by two people or more), ` +
      `${p.judgements} judgements in all.`;
    $("annotators").replaceChildren(...Object.entries(s.annotators).map(
      ([name, c]) => row([name, c.total, c.left, c.right, c.tie, c.skip])));
    const a = s.agreement;
    $("agreement-line").textContent = a.n_pairs === 0
      ? "No pair has been judged by two people yet."
      : `Cohen's kappa ${fmt(a.kappa)} on the ${a.n_pairs} pairs judged twice or more ` +
        `(first two judgements; observed agreement ${fmt(a.observed)}).`;
    $("agreement-pairs").replaceChildren(...a.by_annotators.map(
      (x) => row([x.annotators.join(" & "), x.n_pairs, x.kappa])));
    const b = s.position_bias;
    $("bias-line").textContent = b.n_decisive === 0
      ? "No decisive choice yet."
      : `The left answer won ${b.left_wins} of ${b.n_decisive} decisive choices ` +
        `(${fmt(b.left_win_rate)}, 95% interval ${b.ci95.join(" to ")}; 0.5 means no bias).`;
  }

  async function refresh() {
    try {
      const response = await fetch("/api/stats");
      const data = await response.json();
      if (!response.ok) throw new Error(data.error || `HTTP ${response.status}`);
      render(data);
      $("status").textContent = `updated ${new Date().toLocaleTimeString()}`;
    } catch (error) {
      $("status").textContent = error.message;
    }
  }

  refresh();
  setInterval(refresh, 5000);
})();
