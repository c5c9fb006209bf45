"""LoRA / LoKr adapters on tiny bundles: renders against the PyTorch reference with the adapter applied by
peft / LyCORIS themselves, stacking, weight 0, every precision, renamed copies, switching, and refusals."""

from __future__ import annotations

import numpy as np
import pytest

from lora_util import (attention_root, lokr_adapter, peft_adapter, reference_params, rel, renamed_copies, request,
                       with_dit_of)

pytestmark = pytest.mark.export

RENDER_GRAPHS = ["text_encoder", "condition_encoder", "dit", "vae_decoder"]
NOISE_SEED = 11


def _noise():
    return np.random.default_rng(NOISE_SEED).standard_normal((1, 250, 64)).astype(np.float32)




@pytest.fixture(scope="module")
def bundles(tiny_official, tmp_path_factory):
    from acestep_edge.export.bundle import export_bundle

    root = tmp_path_factory.mktemp("lora_bundles")
    out = {"fp32": export_bundle(tiny_official, root / "fp32", graphs=RENDER_GRAPHS, parity=False)}
    return out


def _precision_bundle(bundles, tiny_official, root, precision):
    from acestep_edge.export.bundle import export_bundle

    if precision == "fp16":
        return export_bundle(tiny_official, root / "fp16", precision="fp16", graphs=RENDER_GRAPHS, parity=False)
    dit = export_bundle(tiny_official, root / f"{precision}-dit", precision=precision, graphs=["dit"], parity=False)
    return with_dit_of(bundles["fp32"], dit, root / precision)


@pytest.fixture(scope="module")
def adapters(tiny_official, tmp_path_factory):
    """Adapters made by peft and LyCORIS on the tiny DiT's official module names."""
    from acestep_edge.models.checkpoint import load_checkpoint

    root = tmp_path_factory.mktemp("adapters")
    fresh = lambda: load_checkpoint(tiny_official, "official").acestep.decoder  # noqa: E731
    peft_adapter(fresh(), root / "style_a", r=4, alpha=8, seed=1, rslora=True)
    peft_adapter(fresh(), root / "style_b", r=2, alpha=2, seed=2, targets=["q_proj", "v_proj"])
    lokr_adapter(fresh(), root / "lokr", seed=3)
    comfy, diff = renamed_copies(root / "style_a", root / "copies")
    return {"a": root / "style_a", "b": root / "style_b", "lokr": root / "lokr", "comfy": comfy, "diffusers": diff,
            "root": root}


@pytest.fixture(scope="module")
def pipeline(bundles):
    from acestep_edge.runtime.pipeline import Pipeline

    return Pipeline.load(bundles["fp32"], threads=2)


@pytest.fixture(scope="module")
def base_render(pipeline):
    return pipeline.generate(request(), noise=_noise())


def _reference(tiny_official, apply):
    """The project's PyTorch reference render with `apply(decoder)` having wrapped its DiT."""
    import torch

    from acestep_edge.models.reference import ReferencePipeline

    ref = ReferencePipeline.from_checkpoint(tiny_official)
    apply(ref.acestep.decoder)
    return ref.render(reference_params(), noise=torch.from_numpy(_noise()))


def _peft_scale(model, weights: dict) -> None:
    from peft.tuners.lora import LoraLayer

    for module in model.modules():
        if isinstance(module, LoraLayer):
            for name, w in weights.items():
                if name in module.scaling:
                    module.scaling[name] *= w


def test_peft_adapter_matches_peft_reference(pipeline, adapters, base_render, tiny_official):
    from peft import PeftModel

    ours = pipeline.generate(request(lora=[{"model": str(adapters["a"]), "weight": 0.8}]), noise=_noise())

    def apply(decoder):
        _peft_scale(PeftModel.from_pretrained(decoder, str(adapters["a"])), {"default": 0.8})

    ref = _reference(tiny_official, apply)
    assert rel(base_render.latents, ref.latents) > 1e-2  # the adapter really moves the render
    assert rel(ours.latents, ref.latents) <= 1e-4
    report = ours.metadata["adapters"]
    assert report == [{"model": str(adapters["a"]), "weight": 0.8, "format": "peft", "rank": 4,
                       "targets": sorted(f"{b}.{p}" for b in ("cross_attn", "self_attn")
                                         for p in ("k_proj", "o_proj", "q_proj", "v_proj")),
                       "triggerWords": []}]


def test_two_stacked_adapters_match_peft(pipeline, adapters, tiny_official):
    from peft import PeftModel

    lora = [{"model": str(adapters["a"]), "weight": 0.8}, {"model": str(adapters["b"]), "weight": -0.5}]
    ours = pipeline.generate(request(lora=lora), noise=_noise())

    def apply(decoder):
        model = PeftModel.from_pretrained(decoder, str(adapters["a"]), adapter_name="a")
        model.load_adapter(str(adapters["b"]), adapter_name="b")
        model.base_model.set_adapter(["a", "b"])
        _peft_scale(model, {"a": 0.8, "b": -0.5})

    ref = _reference(tiny_official, apply)
    assert rel(ours.latents, ref.latents) <= 1e-4


def test_lokr_matches_lycoris(pipeline, adapters, tiny_official):
    from lycoris import create_lycoris_from_weights

    ours = pipeline.generate(request(lora=[{"model": str(adapters["lokr"]), "weight": 0.7}]), noise=_noise())

    def apply(decoder):
        path = str(adapters["lokr"] / "lokr_weights.safetensors")
        network, _ = create_lycoris_from_weights(0.7, path, attention_root(decoder))
        network.apply_to()

    ref = _reference(tiny_official, apply)
    assert rel(ours.latents, ref.latents) <= 1e-4
    (entry,) = ours.metadata["adapters"]
    assert entry["format"] == "lycoris-lokr" and entry["triggerWords"] == ["tinytrigger", "second"]


def test_weight_zero_equals_no_adapter(pipeline, adapters, base_render):
    zero = pipeline.generate(request(lora=[{"model": str(adapters["a"]), "weight": 0}]), noise=_noise())
    assert np.array_equal(zero.latents, base_render.latents)
    assert zero.metadata["adapters"][0]["weight"] == 0


@pytest.mark.parametrize("copy", ["comfy", "diffusers"])
def test_renamed_copies_render_like_peft(pipeline, adapters, copy):
    peft = pipeline.generate(request(lora=[{"model": str(adapters["a"]), "weight": 0.8}]), noise=_noise())
    other = pipeline.generate(request(lora=[{"model": str(adapters[copy]), "weight": 0.8}]), noise=_noise())
    assert other.metadata["adapters"][0]["format"] == {"comfy": "comfyui", "diffusers": "diffusers"}[copy]
    assert rel(other.latents, peft.latents) <= 1e-6


def test_switching_keeps_one_session(pipeline, adapters, base_render):
    """Different adapter sets back to back: same DiT session, recent sets cached, results as fresh."""
    session = pipeline.bundle.session("dit")
    a = [{"model": str(adapters["a"]), "weight": 0.8}]
    first = pipeline.generate(request(lora=a), noise=_noise())
    pipeline.generate(request(lora=[{"model": str(adapters["b"]), "weight": 1.0}]), noise=_noise())
    none = pipeline.generate(request(), noise=_noise())
    again = pipeline.generate(request(lora=a), noise=_noise())
    assert pipeline.bundle.session("dit") is session
    assert np.array_equal(none.latents, base_render.latents)
    assert np.array_equal(again.latents, first.latents)
    from acestep_edge.runtime.adapters import LoraRef

    assert pipeline.adapters.resolve((LoraRef(str(adapters["a"]), 0.8),)) is \
        pipeline.adapters.resolve((LoraRef(str(adapters["a"]), 0.8),))


@pytest.mark.parametrize("precision", ["fp16", "int8", "int4"])
def test_precisions_take_adapters(bundles, adapters, tiny_official, tmp_path, precision):
    from acestep_edge.export.parity import stft_log_magnitude_distance
    from acestep_edge.export.precision import RENDER_BUDGETS
    from acestep_edge.runtime.pipeline import Pipeline

    lora = [{"model": str(adapters["a"]), "weight": 0.8}, {"model": str(adapters["lokr"]), "weight": 0.5}]
    ref = Pipeline.load(bundles["fp32"], threads=2).generate(request(lora=lora), noise=_noise())
    bundle = _precision_bundle(bundles, tiny_official, tmp_path, precision)
    ours = Pipeline.load(bundle, threads=2).generate(request(lora=lora), noise=_noise())
    lat, dist = rel(ours.latents, ref.latents), stft_log_magnitude_distance(ours.audio, ref.audio)
    print(f"{precision}+adapters vs fp32+adapters: latent max rel err {lat:.3g}, MR-STFT {dist:.3f} dB")
    assert ours.metadata["precisions"]["dit"] == precision
    assert dist <= RENDER_BUDGETS[precision]["stft_db"]
    assert lat <= RENDER_BUDGETS[precision]["latent_max_rel_err"]
    base = Pipeline.load(bundle, threads=2).generate(request(), noise=_noise())
    assert rel(base.latents, ours.latents) > 1e-2  # the adapters act at this precision too


def test_bundle_without_adapter_inputs_is_refused(bundles, adapters, tiny_official, tmp_path):
    from acestep_edge.export.bundle import export_bundle
    from acestep_edge.runtime.pipeline import Pipeline
    from acestep_edge.runtime.request import RequestError

    old = export_bundle(tiny_official, tmp_path / "old-dit", graphs=["dit"], parity=False, adapter_targets="none")
    bundle = with_dit_of(bundles["fp32"], old, tmp_path / "old")
    pipe = Pipeline.load(bundle, threads=2)
    with pytest.raises(RequestError, match="no adapter inputs.*re-run `.*export") as info:
        pipe.generate(request(steps=2, lora=[{"model": str(adapters["a"])}]))
    assert info.value.parameter == "lora"
    assert np.isfinite(pipe.generate(request(steps=2)).latents).all()  # without adapters it still renders


def test_io_binding_takes_adapters(bundles, adapters, pipeline):
    """The DiT runner's IO-binding path (what GPUs use; CPU OrtValues here) binds the factors once into every
    constant-feed set and gives the plain `session.run` result bit for bit."""
    from acestep_edge.runtime.device import DeviceOptions
    from acestep_edge.runtime.pipeline import Pipeline

    lora = [{"model": str(adapters["a"]), "weight": 0.8}, {"model": str(adapters["lokr"]), "weight": -0.4}]
    bound = Pipeline.load(bundles["fp32"], threads=2, device=DeviceOptions(io_binding=True))
    assert bound.bundle.options.io_binding
    ours = bound.generate(request(steps=8, lora=lora), noise=_noise())
    plain = pipeline.generate(request(steps=8, lora=lora), noise=_noise())
    assert np.array_equal(ours.latents, plain.latents)


def test_mlp_adapter_on_attention_mlp_bundle_matches_peft(bundles, tiny_official, tmp_path):
    """`--adapter-targets attention+mlp`: an adapter that also carries gate/up/down renders as peft applies it."""
    from peft import PeftModel

    from acestep_edge.export.bundle import export_bundle
    from acestep_edge.models.checkpoint import load_checkpoint
    from acestep_edge.runtime.pipeline import Pipeline

    dit = export_bundle(tiny_official, tmp_path / "mlp-dit", graphs=["dit"], parity=False,
                        adapter_targets="attention+mlp")
    bundle = with_dit_of(bundles["fp32"], dit, tmp_path / "mlp")
    folder = tmp_path / "mlp_lora"
    peft_adapter(load_checkpoint(tiny_official, "official").acestep.decoder, folder, r=3, alpha=6, seed=4,
                 targets=["q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"])
    ours = Pipeline.load(bundle, threads=2).generate(request(lora=[{"model": str(folder), "weight": 1.2}]),
                                                     noise=_noise())
    assert "mlp.down_proj" in ours.metadata["adapters"][0]["targets"]

    def apply(decoder):
        _peft_scale(PeftModel.from_pretrained(decoder, str(folder)), {"default": 1.2})

    ref = _reference(tiny_official, apply)
    assert rel(ours.latents, ref.latents) <= 1e-4


def test_side_paths_do_not_stack_or_leak(tiny_preset):
    """Wrapping the same DiT twice (several exports of one loaded model) keeps one side path per linear, and the
    DiT called outside the wrapper runs without it."""
    import torch

    from acestep_edge.export import adapter_paths
    from acestep_edge.export.graphs import DiTGraph, example_sizes, graph_specs
    from acestep_edge.models.acestep import AceStepModel

    torch.manual_seed(0)
    model = AceStepModel(tiny_preset.dit).eval()
    spec = graph_specs(tiny_preset)["dit"]
    args = spec.example(example_sizes(2, 21), tiny_preset, torch.Generator().manual_seed(3))
    with torch.no_grad():
        once = DiTGraph(model, adapter_paths.ATTENTION_KINDS)(*args)
        twice = DiTGraph(model, adapter_paths.ATTENTION_KINDS)(*args)
        bare = DiTGraph(model)(*args[:5])
        zeros = DiTGraph(model, adapter_paths.ATTENTION_KINDS)(*args[:5], *(torch.zeros_like(a) for a in args[5:]))
    torch.testing.assert_close(twice, once, rtol=0, atol=0)
    torch.testing.assert_close(zeros, bare, rtol=0, atol=0)
    assert (once - bare).abs().max() > 1e-4  # the factors do act
