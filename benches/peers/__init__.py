"""The implementations `benches/run_all.py` measures, one module per kernel family.

Each module builds a list of `Implementation`s: rlhf_fast itself and its peers, imported from
the peers' installed packages (never re-typed). Where a peer keeps its math inline in a trainer
rather than in a function (TRL's PPO/GRPO/RLOO, OpenRLHF), the composite is written here from
the torch calls of the cited file, and labelled as such.
"""
