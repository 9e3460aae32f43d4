"""Likelihood engine: per-shell noise model, batched pose scoring with marginalisation, EM refinement."""
