"""Drop-ins for other training stacks.

Each submodule exposes rlhf_fast kernels under one peer's own function names,
signatures and conventions, and imports that peer only inside itself: importing
``rlhf_fast`` never imports a peer, and ``rlhf_fast.integrations.verl`` needs verl
only for :func:`rlhf_fast.integrations.verl.register`.

- :mod:`rlhf_fast.integrations.verl`: verl 0.9.1's ``core_algos`` advantage
  estimators, ``kl_penalty`` and ``masked_whiten``, plus registration in verl's
  advantage-estimator registry (``algorithm.adv_estimator=rlhf_fast_gae``).
- :mod:`rlhf_fast.integrations.openrlhf`: OpenRLHF's ``get_advantages_and_returns``,
  ``compute_reward`` and ``compute_approx_kl`` (OpenRLHF is never imported).
"""
