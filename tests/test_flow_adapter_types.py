"""DoRA, LoKr and LoHa on Flux and SD3: each learns on the tiny models with only its own tensors trained;
its peft/diffusers files reload into a fresh pipeline with the same image; the kohya/LyCORIS file in the
original fused layout (BFL's / SAI's names) is read exactly by ComfyUI's and Forge's rules, on the tiny
models and on the real FLUX.1-dev / SD3.5 medium layouts; LoKr, which cannot be fused, is refused by name."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_config
from safetensors.torch import load_file
from test_adapter_types_optimizers import ADAPTER_TENSORS
from test_flow_consumer_rules import SD35_MEDIUM, flux  # noqa: F401  (the real FLUX.1-dev layout fixture)
from test_trainers_learn import loss_before_and_after

from studio.errors import StudioError
from studio.export.consumers.flow_rules import COMFYUI, FORGE, diffusers_slots
from studio.export.consumers.lycoris_flow_rules import lycoris_flow_reports
from studio.export.consumers.lycoris_package import CONSUMER as LYCORIS_CONSUMER
from studio.export.exporter import export_run
from studio.export.lycoris import AdapterModule, AdapterWeights
from studio.export.lycoris_fused import fused_lycoris_state, intended_weights
from studio.models import load_base
from trainers import METHODS
from trainers.base import Trainer, prepare_run_dir

BASES = {"flux": "tiny-flux", "sd3": "tiny-sd3"}
# One run per combination the export needs: fused DoRA (Flux), fused LoHa with both CLIPs (SD3), LoKr (refused).
RUNS = {"flux-dora": {}, "sd3-loha": {}, "flux-lokr": {}}
TRAIN = {"steps": 8, "batch_size": 1, "validation": False, "learning_rate": 3e-2}
KOHYA_FILE = "sks-toy-lora.safetensors"


@pytest.fixture(scope="module")
def runs(sample_subject, tmp_path_factory):
    cache: dict[str, Trainer] = {}

    def get(name: str) -> Trainer:
        if name not in cache:
            family, kind = name.split("-")
            config = tiny_config("lora", base=BASES[family], adapter_type=kind, **TRAIN, **RUNS[name])
            directory = tmp_path_factory.mktemp(name) / "run"
            prepare_run_dir(config, sample_subject, directory)
            cache[name] = Trainer(METHODS["lora"], config, directory)
            cache[name].run()
        return cache[name]

    return get


@pytest.mark.parametrize("name", list(RUNS))
def test_learns_with_only_its_adapter_tensors(runs, name):
    trainer = runs(name)
    family, kind = name.split("-")
    before, after = loss_before_and_after(trainer.run_dir)
    assert after < before * 0.97, f"{name}: fixed-noise loss {before:.4f} -> {after:.4f}"
    transformer = trainer.components["transformer"]
    trainable = [n for n, p in transformer.named_parameters() if p.requires_grad]
    assert trainable and all(any(t in n for t in ADAPTER_TENSORS[kind]) for n in trainable), trainable[:4]
    live = transformer.state_dict()
    for key, tensor in load_base(BASES[family]).pipeline.transformer.state_dict().items():
        wrapped = key.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        assert torch.equal(live.get(key, live.get(wrapped)), tensor), f"base weight {key} changed"


@pytest.mark.parametrize("name", ["flux-dora", "sd3-loha"])
def test_exports_reload_and_fused_file_reads_exactly(runs, name):
    family, kind = name.split("-")
    formats = ["diffusers", "kohya"] if kind == "dora" else ["kohya", "peft"]  # peft on Flux: the LoKr run's
    result = export_run(runs(name).run_dir, formats)
    report = json.loads((result.out_dir / "export.json").read_text())
    assert {e["layout"] for e in report["files"]} == set(formats)
    for entry in report["files"]:
        if entry["layout"] != "kohya":  # diffusers' and peft's own loaders: every layer, the same image
            assert entry["consumers"][entry["layout"]]["loads"] == "all" and entry["max_abs_diff"] <= 1e-3, entry
    (kohya,) = [e for e in report["files"] if e["layout"] == "kohya"]
    for consumer in (COMFYUI, FORGE):
        verdict = kohya["consumers"][consumer]
        assert verdict["loads"] == "all" and verdict["strength"] == "as trained", verdict
    # sd-scripts' own module: DoRA's LoRA part without dora_scale, no LoHa; A1111: no Flux, no SD3.5 model
    assert kohya["consumers"]["kohya sd-scripts"]["loads"] == {"dora": "partial", "loha": "none"}[kind]
    assert kohya["consumers"]["A1111"]["loads"] == "none"
    # LyCORIS' own loader (scripts/test-compat): every key; LoHa as trained at alpha = rank, DoRA another strength
    assert kohya["consumers"][LYCORIS_CONSUMER]["loads"] == {"dora": "partial", "loha": "all"}[kind]
    state = load_file(str(result.out_dir / KOHYA_FILE))
    fused = {"flux": "lora_unet_double_blocks_0_img_attn_qkv", "sd3": "lora_unet_joint_blocks_0_x_block_attn_qkv"}[family]
    tensor = {"dora": "dora_scale", "loha": "hada_w1_a"}[kind]
    config = runs(name).components["transformer"].config
    assert state[f"{fused}.{tensor}"].shape[0] == 3 * config.num_attention_heads * config.attention_head_dim


def test_lokr_has_no_fused_file_and_says_so(runs):
    run = runs("flux-lokr").run_dir
    with pytest.raises(StudioError, match="LoKr has no kohya/LyCORIS file for flux"):
        export_run(run, "kohya")
    result = export_run(run, "all")
    assert result.formats == ["peft"]
    (entry, *_) = result.files
    assert entry["consumers"]["peft"]["loads"] == "all" and entry["max_abs_diff"] <= 1e-3


# --- the fused writer and the consumers' rules, without training -------------------------------------
def _random_adapter(kind: str, shapes: dict[tuple[str, str], tuple[int, int]], pick, bases=None) -> AdapterWeights:
    """Rank-2 factors of ``kind`` on the picked modules (DoRA magnitudes near the adapted rows' norms)."""
    modules = []
    for i, ((component, path), (out, inputs)) in enumerate(sorted(shapes.items())):
        if not pick(component, path):
            continue
        g = torch.Generator().manual_seed(i)
        if kind == "loha":
            t = {"hada_w1_a": torch.randn(out, 2, generator=g), "hada_w1_b": torch.randn(2, inputs, generator=g),
                 "hada_w2_a": torch.randn(out, 2, generator=g), "hada_w2_b": torch.randn(2, inputs, generator=g)}
        elif kind == "lokr":
            t = {"lokr_w1": torch.randn(2, 2, generator=g), "lokr_w2": torch.randn(out // 2, inputs // 2, generator=g)}
        else:
            a, b = torch.randn(2, inputs, generator=g), torch.randn(out, 2, generator=g) * 0.1
            norm = (bases[(component, path)] + 2.0 * b @ a).norm(dim=1)
            t = {"lora_A": a, "lora_B": b, "lora_magnitude_vector": norm * (1 + 0.1 * torch.rand(out, generator=g))}
        modules.append(AdapterModule(component, path, kind, t, alpha=4.0, rank=2))
    return AdapterWeights(kind, modules)


def _attention_and_final(component: str, path: str) -> bool:
    if component != "transformer":
        return path.endswith(("q_proj", "v_proj")) and ".layers.0." in path
    return path.endswith(("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "add_k_proj", "proj_mlp",
                          "norm_out.linear"))


def _file_and_truth(kind, components, family, pick):
    from studio.export.consumers import layout_of
    from studio.export.lora_weights import module_key
    from studio.export.lycoris_fused import original_bases

    layout = layout_of(components, family)
    shapes = {(c, p): tuple(m.weight.shape) for c in ("transformer", "text_encoder")
              for p, m in components[c].named_modules() if isinstance(m, torch.nn.Linear)}
    bases = {(c, p): components[c].get_submodule(p).weight.detach().float() for c, p in shapes}
    weights = _random_adapter(kind, shapes, pick, bases)
    config = layout.unet_config
    members = original_bases(components["transformer"], weights, family, config)
    encoders = {module_key(*key): bases[key] for key in bases if key[0] == "text_encoder"}
    state = fused_lycoris_state(weights, family, config, members, encoders)
    base_of, adapted = intended_weights(weights, family, config, members, encoders)
    return layout, state, base_of, adapted, weights


@pytest.fixture(scope="module")
def pipes(tiny_data_dir):
    return {name: load_base(base).pipeline for name, base in BASES.items()}


@pytest.mark.parametrize("kind", ["dora", "loha"])
@pytest.mark.parametrize("family_name", list(BASES))
def test_fused_file_is_exact_and_the_rules_catch_errors(pipes, family_name, kind):
    pipe = pipes[family_name]
    family = pipe_family(pipe)
    components = {"transformer": pipe.transformer, "text_encoder": pipe.text_encoder}
    layout, state, bases, adapted, weights = _file_and_truth(kind, components, family, _attention_and_final)
    shapes = {t: (b.shape[0], b.shape[1]) for t, b in bases.items()}
    verdicts = lycoris_flow_reports(state, layout, shapes, bases, adapted)
    for consumer in (COMFYUI, FORGE):
        assert verdicts[consumer]["loads"] == "all" and verdicts[consumer]["strength"] == "as trained", verdicts[consumer]
    # Studio's placement agrees with ComfyUI's own place for each diffusers module (its rows of the fused
    # weight too, on Flux: ComfyUI sizes SD3's qkv rows as 64 × depth, not tiny-sd3's width)
    for module in weights.by_component("transformer"):
        place, slot = family.kohya_place(module.path, layout.unet_config), diffusers_slots(layout)[module.path]
        assert (place.name, place.swapped) == (slot.target, slot.swap)
        assert family_name == "sd3" or sum((place.sizes or (0,))[: place.slot]) == (slot.offset or 0)
    # the rules notice a wrong magnitude or factor row, and halves left unswapped
    qkv = next(k for k in state if ("img_attn_qkv." in k or "x_block_attn_qkv." in k) and k.endswith(("dora_scale", "hada_w1_a")))
    broken = dict(state, **{qkv: state[qkv].clone().index_fill_(0, torch.tensor([1]), 0.5)})
    assert lycoris_flow_reports(broken, layout, shapes, bases, adapted)[COMFYUI]["loads"] == "partial"
    final = next(k for k in state if "final_layer_adaLN_modulation_1" in k and k.endswith(("lora_up.weight", "hada_w1_a")))
    unswapped = dict(state, **{final: torch.cat(state[final].chunk(2)[::-1])})
    assert lycoris_flow_reports(unswapped, layout, shapes, bases, adapted)[FORGE]["loads"] == "partial"


def test_lokr_fuses_only_where_nothing_is_fused(pipes):
    pipe = pipes["flux"]
    family = pipe_family(pipe)
    components = {"transformer": pipe.transformer, "text_encoder": pipe.text_encoder}
    layout, state, bases, adapted, _ = _file_and_truth(
        "lokr", components, family, lambda c, p: p in ("norm_out.linear", "transformer_blocks.0.attn.to_out.0"))
    shapes = {t: (b.shape[0], b.shape[1]) for t, b in bases.items()}
    assert lycoris_flow_reports(state, layout, shapes, bases, adapted)[COMFYUI]["loads"] == "all"
    with pytest.raises(StudioError, match="cannot be written as one module"):
        _file_and_truth("lokr", components, family, _attention_and_final)


def pipe_family(pipe):
    from studio.families import family_for

    return family_for(pipe)


def test_real_flux_layout_places_every_fused_loha_key(flux):  # noqa: F811
    """FLUX.1-dev's widths (meta device): every key of a LoHa on all attention, proj_mlp and the final
    modulation is placed by ComfyUI and Forge, each factor fitting its fused weight."""
    layout, shapes = flux
    weights = _random_adapter("loha", shapes, _attention_and_final)
    config = layout.unet_config
    state = fused_lycoris_state(weights, layout.family, config, {}, {})
    targets = {}
    for module in weights.modules:
        if module.component == "transformer":
            place = layout.family.kohya_place(module.path, config)
            targets[place.name] = (sum(place.sizes) if place.sizes else shapes[(module.component, module.path)][0],
                                   shapes[(module.component, module.path)][1])
        else:
            targets[f"text_encoder:{module.path.removeprefix('text_model.')}"] = shapes[(module.component, module.path)]
    assert "double_blocks.18.img_attn.qkv" in targets and targets["single_blocks.0.linear1"] == (21504, 3072)
    verdicts = lycoris_flow_reports(state, layout, targets)
    for consumer in (COMFYUI, FORGE):
        assert verdicts[consumer]["loads"] == "all" and verdicts[consumer]["modules_loaded"] == len(targets), verdicts[consumer]


def test_real_sd35_layout_reads_a_fused_dora_exactly(tiny_data_dir):
    """SD3.5 medium's widths: a DoRA on block 0's attention (random base weights at those widths) read by
    ComfyUI's rules gives peft's weights."""
    from diffusers import SD3Transformer2DModel

    from studio.export.consumers import layout_of
    from studio.families.sd3 import StableDiffusion3Family

    config = dict(SD35_MEDIUM, num_layers=1, dual_attention_layers=())
    with torch.device("meta"):
        meta = SD3Transformer2DModel(**config)
    block = meta.transformer_blocks[0]
    real = torch.nn.ModuleDict({"to_q": torch.nn.Linear(1536, 1536), "to_k": torch.nn.Linear(1536, 1536),
                                "to_v": torch.nn.Linear(1536, 1536)})
    block.attn.to_q, block.attn.to_k, block.attn.to_v = real["to_q"], real["to_k"], real["to_v"]
    family = StableDiffusion3Family()
    layout = layout_of({"transformer": meta}, family)
    members = {f"transformer_blocks.0.attn.{n}": real[n].weight.detach() for n in real}
    shapes = {("transformer", f"transformer_blocks.0.attn.{n}"): (1536, 1536) for n in ("to_q", "to_v")}
    weights = _random_adapter("dora", shapes, lambda c, p: True, {key: members[key[1]] for key in shapes})
    state = fused_lycoris_state(weights, family, meta.config, members, {})
    base_of, adapted = intended_weights(weights, family, meta.config, members, {})
    assert set(base_of) == {"joint_blocks.0.x_block.attn.qkv"} and base_of["joint_blocks.0.x_block.attn.qkv"].shape == (4608, 1536)
    verdicts = lycoris_flow_reports(state, layout, {t: tuple(b.shape) for t, b in base_of.items()}, base_of, adapted)
    assert verdicts[COMFYUI]["loads"] == "all" and verdicts[COMFYUI]["strength"] == "as trained", verdicts[COMFYUI]
    assert verdicts[FORGE]["loads"] == "all"
