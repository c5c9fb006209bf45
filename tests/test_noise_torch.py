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


@pytest.fixture(scope="module")
def demo_reference(tmp_path_factory):
    import torch

    from acestep_edge.export.demo_bundle import SEED, SILENCE_FRAMES, demo_preset
    from acestep_edge.models.random_checkpoint import write_random_checkpoint
    from acestep_edge.models.reference import ReferencePipeline

    root = tmp_path_factory.mktemp("demo_ckpt")
    write_random_checkpoint(root, demo_preset(), seed=SEED, layout="official", dtype=torch.float32,
                            silence_frames=SILENCE_FRAMES)
    return ReferencePipeline.from_checkpoint(root)


def test_torch_cpu_render_equals_reference_fed_torch_randn(demo_reference):
    """The same seed through settings.noise torch-cpu and through torch.randn on a CPU generator."""
    import torch

    from acestep_edge.export.demo_bundle import default_out
    from acestep_edge.models.reference import ReferenceParams
    from acestep_edge.runtime.pipeline import Pipeline

    seed = 81563
    request = {"taskType": "audioInference", "taskUUID": "6a1e2f2c-52a2-4f57-9d0b-0f1a9c2b7d11",
               "positivePrompt": "calm piano", "duration": 10, "steps": 4, "seed": seed,
               "settings": {"noise": "torch-cpu", "lyrics": "la la"}}
    ours = Pipeline.load(default_out()).generate(request)
    assert ours.metadata["noise"] == {"source": "torch-cpu", "seed": seed, "dtype": "float32"}
    eps = torch.randn(1, 250, 64, generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float32)
    ref = demo_reference.render(ReferenceParams(caption="calm piano", lyrics="la la", duration=10, steps=4), noise=eps)
    err = float(np.abs(ours.latents - ref.latents).max() / np.abs(ref.latents).max())
    assert err <= 1e-4, err
    # and the numpy draw of the same seed is a different song
    other = Pipeline.load(default_out()).generate({**request, "settings": {"noise": "numpy", "lyrics": "la la"}})
    assert float(np.abs(other.latents - ref.latents).max() / np.abs(ref.latents).max()) > 0.1
