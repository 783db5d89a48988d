"""The offline built-in example: short, positive product reviews (see ``task.py``).

``run_demo(DemoConfig())`` runs SFT -> reward model -> PPO on it and writes the report;
``gold_score`` is the hidden preference, public so anyone can re-score saved samples.
"""

from rlhf_fast.demo.annotators import BradleyTerryAnnotators, ceiling_accuracy
from rlhf_fast.demo.run import DemoConfig, evaluate_policy, run_demo
from rlhf_fast.demo.task import gold_score, make_prompts, make_sft_corpus

__all__ = [
    "BradleyTerryAnnotators",
    "DemoConfig",
    "ceiling_accuracy",
    "evaluate_policy",
    "gold_score",
    "make_prompts",
    "make_sft_corpus",
    "run_demo",
]
