"""How often a perfect sampler misses the R-hat limit: the chance that the largest
rank-normalised split R-hat (ArviZ, Vehtari et al. 2021) over ``--parameters`` parameters
exceeds ``--limit`` when every chain holds independent draws of the posterior.

    python benchmarks/rhat_noise.py [--chains 2] [--draws 300] [--parameters 19] [--limit 1.01]
        [--reps 400] [--seed 0]

The standard job samples 19 parameters with 2 chains of 300 draws; R-hat is noisy at such
counts even with no autocorrelation, so a limit met by chance cannot tell samplers apart.
"""

from __future__ import annotations

import argparse
import warnings

import arviz as az
import numpy as np


def chance_over(
    chains: int, draws: int, parameters: int, limit: float, reps: int, seed: int
) -> float:
    """Share of ``reps`` sets of independent standard normal draws whose largest R-hat over
    ``parameters`` exceeds ``limit``."""
    rng = np.random.default_rng(seed)
    over = 0
    for _ in range(reps):
        x = rng.standard_normal((parameters, chains, draws))
        over += max(float(az.rhat(x[k], method="rank")) for k in range(parameters)) > limit
    return over / reps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chains", type=int, default=2)
    parser.add_argument("--draws", type=int, default=300)
    parser.add_argument("--parameters", type=int, default=19)
    parser.add_argument("--limit", type=float, default=1.01)
    parser.add_argument("--reps", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    for chains in sorted({args.chains, 2 * args.chains}):
        share = chance_over(chains, args.draws, args.parameters, args.limit, args.reps, args.seed)
        print(
            f"{chains} chains x {args.draws} independent draws, {args.parameters} parameters: "
            f"max R-hat > {args.limit} in {share:.0%} of {args.reps} repetitions"
        )


if __name__ == "__main__":
    main()
