"""Reference ε values from Google's dp_accounting (PLD, connect-the-dots pessimistic and
privacy-buckets optimistic estimates, grid 1e-4) for Poisson-subsampled Gaussian
compositions. Run once; the output is committed as pld_reference.json.

    python3 -m venv venv && venv/bin/pip install dp-accounting==0.6.0
    venv/bin/python pld_reference.py > pld_reference.json
"""
import json
import logging

import dp_accounting
from dp_accounting.pld import privacy_loss_distribution as pld

logging.disable(logging.WARNING)

# (noise multiplier, sampling rate, rounds, delta): corners and the middle of the grid
# noise 0.5-20, sampling 0.001-1, rounds 1-10^4, delta 1e-5-1e-8.
CONFIGS = [
    (0.5, 0.001, 10000, 1e-8),
    (0.5, 0.01, 1000, 1e-5),
    (0.5, 0.1, 10, 1e-6),
    (0.5, 1.0, 1, 1e-5),
    (0.8, 0.01, 10000, 1e-5),
    (1.0, 0.01, 1000, 1e-5),
    (1.0, 0.001, 10000, 1e-7),
    (1.0, 1.0, 10, 1e-8),
    (2.0, 0.1, 10000, 1e-5),
    (2.0, 0.5, 100, 1e-6),
    (2.0, 1.0, 100, 1e-5),
    (5.0, 0.05, 1000, 1e-8),
    (5.0, 1.0, 100, 1e-5),
    (10.0, 1.0, 100, 1e-5),
    (10.0, 0.3, 10000, 1e-6),
    (20.0, 0.5, 10, 1e-6),
    (20.0, 1.0, 10000, 1e-8),
    (20.0, 0.001, 1, 1e-5),
]


def epsilon(z, q, t, d, pessimistic):
    p = pld.from_gaussian_mechanism(
        standard_deviation=z,
        sensitivity=1.0,
        sampling_prob=q,
        pessimistic_estimate=pessimistic,
        value_discretization_interval=1e-4,
    )
    return p.self_compose(t).get_epsilon_for_delta(d)


rows = []
for z, q, t, d in CONFIGS:
    rows.append(
        {
            "noise_multiplier": z,
            "sampling_rate": q,
            "rounds": t,
            "delta": d,
            "pessimistic": epsilon(z, q, t, d, True),
            "optimistic": epsilon(z, q, t, d, False),
        }
    )
print(json.dumps({"dp_accounting": "0.6.0", "step": 1e-4, "configs": rows}, indent=1))
