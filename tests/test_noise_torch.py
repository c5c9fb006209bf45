"""torch-cpu noise equals torch.randn from a CPU generator, bit for bit (torch is a test dependency)."""

from __future__ import annotations

import numpy as np
import pytest

from acestep_edge.runtime import noise, noise_cpu

pytestmark = pytest.mark.export

SEEDS = [0, 1, 42, 81563, 2**31 - 1, 2**32 + 5, 2**63 - 1]
SHAPES = [(1, 250, 64), (1, 3750, 64), (1, 15000, 64), (1, 251, 64)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"T{s[1]}")
@pytest.mark.parametrize("seed", SEEDS)
def test_torch_cpu_equals_torch_randn(seed, shape):
    import torch

    want = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float32).numpy()
    got = noise.draw("torch-cpu", seed, shape[1])
    assert got.shape == want.shape and got.dtype == want.dtype
    diff = int((got.view(np.uint32) != want.view(np.uint32)).sum())
    assert diff == 0, f"{diff} of {got.size} values differ in their bits"


@pytest.mark.parametrize("n", [16, 17, 31, 33, 1000])
def test_odd_sizes_recompute_the_last_block(n):
    import torch

    want = torch.randn(n, generator=torch.Generator("cpu").manual_seed(3)).numpy()
    np.testing.assert_array_equal(noise_cpu.randn(3, (n,)).view(np.uint32), want.view(np.uint32))


def test_mt19937_seeding_is_init_genrand():
    # numpy's legacy RandomState seeds MT19937 with init_genrand: an independent check of the key.
    for seed in (0, 5, 2**32 - 1):
        want = np.random.RandomState(seed)._bit_generator.random_raw(5)
        np.testing.assert_array_equal(noise_cpu.mt19937_words(seed, 5), want.astype(np.uint32))
    np.testing.assert_array_equal(noise_cpu.mt19937_words(2**32 + 5, 5), noise_cpu.mt19937_words(5, 5))
