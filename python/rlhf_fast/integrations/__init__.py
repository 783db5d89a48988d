"""Drop-ins for other training stacks.

Each submodule exposes rlhf_fast kernels under one peer's own function names,
signatures and conventions, and imports that peer only inside itself: importing
``rlhf_fast`` never imports a peer, and ``rlhf_fast.integrations.verl`` needs verl
only for :func:`rlhf_fast.integrations.verl.register`.

- :mod:`rlhf_fast.integrations.verl`: verl 0.9.1's ``core_algos`` advantage
  estimators, ``kl_penalty`` and ``masked_whiten``, plus registration in verl's
  advantage-estimator registry (``algorithm.adv_estimator=rlhf_fast_gae``).
- :mod:`rlhf_fast.integrations.openrlhf`: OpenRLHF 0.11.2's ``get_advantages_and_returns``,
  ``get_cumulative_returns``, ``compute_reward`` and ``compute_approx_kl``, plus
  ``patch()``, which routes a loaded experience maker through them.
- :mod:`rlhf_fast.integrations.trl`: TRL 1.12.0's GRPO, RLOO and PPO advantage
  computations (inline in TRL's trainers, so provided as functions with TRL's
  semantics) and the PPO trainer's ``masked_mean``/``masked_var``/``masked_whiten``,
  with ``patch()`` for the latter.
"""
