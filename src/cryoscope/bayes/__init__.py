"""Bayesian pseudo-atomic models: isotropic Gaussian mixtures sampled by Gibbs (Poisson model) and HMC (Gaussian model).

Method: Joubert, "Bayesian inference of initial models in cryo-EM" (thesis; `../shared/seeds`), chapters 2-5
and appendices A-D. Modules: `draws` (seeded Gamma / Dirichlet draws), `counts` (binning of maps and images),
`prior`, `assignments` (multinomial assignments and their sufficient statistics), `image_assignments` (the same,
exact and fast, for binned images), `mixture` (EM and Gibbs for binned 3-D data: fitting a map), `fit_map`,
`projected` (Gibbs for 2-D projections with unknown rotations and shifts), `pipeline` (its initial and refinement
stages), `class_averages` (deconvolved, centred class averages, §4.1), and the Gaussian-noise engine: `hmc`
(HMC and Metropolis-Hastings), `gaussian_model`, `gaussian_sampler`, `gaussian_pipeline` (chapter 5).
"""
