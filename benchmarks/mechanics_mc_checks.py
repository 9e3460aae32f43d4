"""Monte Carlo checks of every moment formula of the mechanical model on the IgG-like network of
benchmarks/mechanics_fit.py (102 masses, 548 springs, k = 150 kT/Å², q = 0.5 Å), and the evidence for the sign slip
in the α = α' phase of Eqs. 4.164-4.165.

For each formula: the largest |z| = |MC mean − analytic| / MC standard error over all entries, and the relative
error ‖MC − analytic‖ / ‖analytic‖ (which includes MC noise). Writes benchmarks/out/mechanics_mc_checks.json.

    OMP_NUM_THREADS=1 python benchmarks/mechanics_mc_checks.py --samples 20000
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from mechanics_fit import igg_network  # noqa: E402

from cryoscope.hetero.moments import fourier_second_moment, mean_density, second_moment  # noqa: E402
from cryoscope.hetero.moments_basis import BoxBasis, SineBasis, coefficient_covariance, coefficient_mean, density_coefficients  # noqa: E402
from cryoscope.representations.elastic_network import hessian, positional_covariance  # noqa: E402

F64 = torch.float64


def stats(samples: torch.Tensor, expected: torch.Tensor) -> dict:
    return moment_stats(samples.mean(0), samples.std(0), samples.shape[0], expected)


def moment_stats(mean: torch.Tensor, std: torch.Tensor, n: int, expected: torch.Tensor) -> dict:
    diff = mean - expected
    return {"max_abs_z": float((diff / (std / math.sqrt(n))).abs().max()), "relative_error": float(diff.norm() / expected.norm()),
            "entries": expected.numel()}


def product_stats(c: torch.Tensor, mean: torch.Tensor, expected: torch.Tensor, chunk: int = 500) -> dict:
    """Streaming mean and standard deviation of (c - mean)(c - mean)ᵀ over samples (memory: one chunk)."""
    s1 = torch.zeros_like(expected)
    s2 = torch.zeros_like(expected)
    for s0 in range(0, c.shape[0], chunk):
        d = c[s0:s0 + chunk] - mean
        p = d[:, :, None] * d[:, None, :]
        s1 += p.sum(0)
        s2 += (p * p).sum(0)
    n = c.shape[0]
    m = s1 / n
    return moment_stats(m, ((s2 - n * m * m) / (n - 1)).clamp_min(0).sqrt(), n, expected)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=20000)
    ap.add_argument("--k", type=float, default=150.0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    net = igg_network()
    centre = 0.5 * (net.positions.min(0).values + net.positions.max(0).values)
    x0 = net.positions - centre
    cov = positional_covariance(hessian(net, args.k))
    f = torch.ones(net.n_masses, dtype=F64)
    q = 0.5
    lam, vec = torch.linalg.eigh(cov)
    gen = torch.Generator().manual_seed(0)
    delta = ((torch.randn(args.samples, cov.shape[0], generator=gen, dtype=F64) * lam.clamp_min(0).sqrt()) @ vec.T).reshape(-1, net.n_masses, 3)
    x = x0 + delta
    out: dict = {"samples": args.samples, "k": args.k, "q": q}

    # real space: points near masses, pairs equal / close / far
    pa = x0[torch.randint(0, net.n_masses, (30,), generator=gen)] + 0.3 * torch.randn(30, 3, generator=gen, dtype=F64)
    pb = torch.cat([pa[:10], pa[10:20] + 0.3 * torch.randn(10, 3, generator=gen, dtype=F64), pa[20:].flip(0)])
    rho = []
    for s0 in range(0, args.samples, 2000):
        xs = x[s0:s0 + 2000]
        d2a = ((pa[None, :, None] - xs[:, None]) ** 2).sum(-1)
        d2b = ((pb[None, :, None] - xs[:, None]) ** 2).sum(-1)
        norm = (2 * math.pi * q * q) ** -1.5
        rho.append((norm * torch.exp(-d2a / (2 * q * q)).sum(-1), norm * torch.exp(-d2b / (2 * q * q)).sum(-1)))
    ra, rb = torch.cat([r[0] for r in rho]), torch.cat([r[1] for r in rho])
    out["mean_density_eq_4_81"] = stats(ra, mean_density(pa, x0, cov, f, q))
    out["second_moment_eq_4_122_4_128"] = stats(ra * rb, second_moment(pa, pb, x0, cov, f, q))

    for name, basis in (("sine_5x5x5", SineBasis(7.5, 5)), ("box_half_space_1", BoxBasis.half_space(7.5, 1))):
        t0 = time.perf_counter()
        mean = coefficient_mean(basis, x0, cov, f, q)
        v = coefficient_covariance(basis, x0, cov, f, q)
        seconds = time.perf_counter() - t0
        c = torch.cat([density_coefficients(basis, x[s0:s0 + 1000], f, q) for s0 in range(0, args.samples, 1000)])
        out[f"{name}_mean"] = stats(c, mean)
        out[f"{name}_covariance"] = {**product_stats(c, mean, v), "analytic_seconds": seconds}

    # sign slip: E c_a c_b (complex box basis, Eq. 4.176) with the α = α' phase as printed and as corrected
    r = 7.5
    basis = BoxBasis.half_space(r, 1)
    k, _ = basis.fourier_terms()
    norm = (2 * r) ** -3
    corrected = norm * fourier_second_moment(k, k, x0, cov, f, q)
    idx = torch.arange(net.n_masses)
    s = cov.reshape(net.n_masses, 3, net.n_masses, 3)[idx, :, idx, :] + 0.5 * q * q * torch.eye(3, dtype=F64)
    ksum = k[:, None] + k[None, :]
    damp = (-math.pi**2 * q * q * ((k[None] - k[:, None]) ** 2).sum(-1)[..., None]
            - 2 * math.pi**2 * torch.einsum("abi,nij,abj->abn", ksum, s, ksum))
    phase = 2 * math.pi * torch.einsum("abi,ni->abn", ksum, x0)
    printed = corrected - norm * torch.polar(damp.exp(), -phase).sum(-1) + norm * torch.polar(damp.exp(), phase).sum(-1)
    c = torch.cat([density_coefficients(basis, x[s0:s0 + 1000], f, q) for s0 in range(0, args.samples, 1000)])
    cc = torch.complex(c[:, 0::2], c[:, 1::2])
    prod = cc[:, :, None] * cc[:, None, :]
    for label, expected in (("corrected", corrected), ("printed", printed)):
        re, im = stats(prod.real, expected.real), stats(prod.imag, expected.imag)
        out[f"box_second_moment_eq_4_176_{label}"] = {"max_abs_z_real": re["max_abs_z"], "max_abs_z_imag": im["max_abs_z"],
                                                     "relative_error": float((prod.mean(0) - expected).abs().norm() / expected.abs().norm())}
    for key, val in out.items():
        print(f"{key}: {val}")
    Path(__file__).parent.joinpath("out").mkdir(exist_ok=True)
    (Path(__file__).parent / "out" / "mechanics_mc_checks.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
