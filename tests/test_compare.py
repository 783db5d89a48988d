"""``rlhf-fast compare``: its config, and one tiny seed end to end (every algorithm, the report;
marked slow: ~40 s)."""

import json

import pytest

from rlhf_fast.config import OptionValueError
from rlhf_fast.demo.compare import CompareConfig, run_compare

TINY = [
    "--n-sft-examples",
    "200",
    "--n-preference-pairs",
    "40",
    "--n-eval-pairs",
    "12",
    "--n-prompts",
    "32",
    "--n-eval-samples",
    "8",
    "--sft.max-steps",
    "3",
    "--reward.max-steps",
    "3",
    "--ppo.max-steps",
    "2",
    "--ppo.rollout-batch-size",
    "4",
    "--ppo.minibatch-size",
    "4",
    "--ppo.max-new-tokens",
    "6",
    "--grpo.max-steps",
    "2",
    "--grpo.prompts-per-step",
    "2",
    "--grpo.minibatch-size",
    "8",
    "--rloo.max-steps",
    "2",
    "--rloo.prompts-per-step",
    "2",
    "--rloo.minibatch-size",
    "8",
    "--dpo.max-steps",
    "2",
    "--dpo.batch-size",
    "4",
    "--curve-every",
    "1",
    "--curve-samples",
    "4",
    "--no-progress",
    "--no-tensorboard",
    "--device",
    "cpu",
]


def test_compare_settings_are_checked():
    with pytest.raises(OptionValueError, match="seed"):
        run_compare(CompareConfig(seed=3))
    with pytest.raises(OptionValueError, match="algorithms"):
        CompareConfig(algorithms=[])


def test_compare_refuses_wired_stage_options(capsys):
    from rlhf_fast.cli import main

    assert main(["compare", "--grpo.policy", "x"]) == 2
    assert "CompareConfig sets it to the SFT model" in capsys.readouterr().err
    assert main(["compare", "--grpo.seed", "1"]) == 2


@pytest.mark.slow
def test_tiny_comparison_end_to_end(tmp_path, monkeypatch, capsys):
    from rlhf_fast.cli import main
    from rlhf_fast.metrics import MetricsLogger

    monkeypatch.setattr(MetricsLogger, "plot", lambda self, *args, **kwargs: None)
    out = tmp_path / "cmp"
    assert main(["compare", "--output-dir", str(out), "--seeds", "0", *TINY]) == 0
    summary = json.loads((out / "compare.json").read_text())
    assert set(summary["algorithms"]) == {"ppo", "grpo", "rloo", "dpo"}
    for name, per_seed in summary["algorithms"].items():
        assert set(per_seed["0"]) >= {"gold", "gain_sft_sd", "kl", "proxy", "seconds"}, name
        assert summary["curves"][name]["0"], name  # a curve point at least
    report = (out / "report.md").read_text()
    assert "| GRPO |" in report and "| DPO |" in report
    assert (out / "plots" / "compare.png").is_file()
