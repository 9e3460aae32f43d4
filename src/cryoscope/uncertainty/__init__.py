"""Uncertainty engine: softest modes of the Hessian of the log-likelihood."""
