"""The suite's check that an Experiment's vmapped runs are the runs one by one."""
from __future__ import annotations

import numpy as np

from nnmjax.sim import build_experiment


def assert_vmapped_runs_equal_one_by_one(config, attack: str, rule: str, seeds, steps: int,
                                         *, second_rtol: float = 2e-4,
                                         second_atol: float = 1e-5):
    """Build ``config``'s (attack, rule) experiment over ``seeds`` and for each seed alone;
    run ``steps`` steps; the losses and the second output (``kappa_hat``, or the consensus
    distance) of each vmapped run equal its own run's. Returns the vmapped outputs."""
    both = build_experiment(config, attack, rule, list(seeds))
    _, (loss, second) = both.run_chunk(both.init(), steps)
    for i, seed in enumerate(seeds):
        one = build_experiment(config, attack, rule, [seed])
        _, (l1, s1) = one.run_chunk(one.init(), steps)
        np.testing.assert_allclose(np.asarray(loss[i]), np.asarray(l1[0]), rtol=2e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(second[i]), np.asarray(s1[0]), rtol=second_rtol,
                                   atol=second_atol)
    return loss, second
