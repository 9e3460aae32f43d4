"""Heterogeneity as statistics (issue 9): ML mean and covariance of a spherical-basis density, and its mechanical model."""
