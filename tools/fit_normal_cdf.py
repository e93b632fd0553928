"""Fit the polynomial Q of the kernels' normal CDF, and print it as the C and Triton code use it.

For a = |z| / sqrt 2 (|z| capped at 12) and t = 1 / (1 + a / 2), both kernels compute
erfc(a) / 2 = exp(-a^2) t Q(t); this fits Q to erfc(a) exp(a^2) / (2 t) over the t the cap allows, minimising the
largest relative error: weighted least squares on Chebyshev nodes, reweighted towards the worst errors (Lawson's
iteration), against mpmath's erfc (installed with torch, through sympy).

    .venv/bin/python tools/fit_normal_cdf.py            # the coefficients, highest power first, and the errors
    .venv/bin/python tools/fit_normal_cdf.py --degree 5 # the C kernel's Q for bfloat16 data (normal_cdf with bf16 set)
"""
import argparse

import mpmath
import numpy as np

A_MAX = 12 / np.sqrt(2)
T_MIN = 1 / (1 + A_MAX / 2)


def target(t: float) -> float:
    a = 2 * (1 - mpmath.mpf(t)) / mpmath.mpf(t)
    return float(mpmath.erfc(a) * mpmath.exp(a * a) / (2 * mpmath.mpf(t)))


def fit(degree: int = 8, nodes: int = 3000, rounds: int = 200):
    """Coefficients (highest power first, rounded to float32) and the largest relative error in float64."""
    mpmath.mp.dps = 30
    t = (T_MIN + 1) / 2 + (1 - T_MIN) / 2 * np.cos(np.pi * (np.arange(nodes) + 0.5) / nodes)
    f = np.array([target(x) for x in t])
    vander, weight, best = np.vander(t, degree + 1), 1 / f, None
    for _ in range(rounds):
        coef = np.linalg.lstsq(vander * weight[:, None], f * weight, rcond=None)[0]
        error = np.abs(vander @ coef - f) / f
        if best is None or error.max() < best[1]:
            best = (coef, error.max())
        weight = weight * (error / error.max() + 1e-3) ** 0.5
        weight /= weight.max()
    return best[0].astype(np.float32), best[1]


def float32_error(coef: np.ndarray, points: int = 20001) -> float:
    """The largest relative error of Q evaluated as the kernels do: Horner's rule in float32."""
    t = np.linspace(T_MIN, 1, points)
    q = np.full_like(t, coef[0], dtype=np.float32)
    for c in coef[1:]:
        q = q * t.astype(np.float32) + c
    return float(np.max(np.abs(q.astype(np.float64) / np.array([target(x) for x in t]) - 1)))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--degree", type=int, default=8)
    args = parser.parse_args(argv)
    coef, error = fit(args.degree)
    print(f"degree {args.degree}: largest relative error {error:.2e} exact, {float32_error(coef):.2e} in float32")
    for c in coef:
        print(f"{float(c):.9e}")


if __name__ == "__main__":
    main()
