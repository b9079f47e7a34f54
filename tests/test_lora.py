"""Low-rank rate adapters (issue 14, :mod:`lpm.models.lora`) and the comparison of every variable-rate method
(:mod:`lpm.eval.compare`, ``notebooks/comparison.ipynb``), on tiny CPU configs.

Fresh, zeroed or rank-0 adapters are the base bit for bit; only the adapters of the stage's rate reach the
optimizer; progressive stages start from the trained neighbour; merged and unmerged codecs decode the same
stream to within rounding; the adapters are parameters that checkpoints, ``.double()``, ``functional_call``
and the float64 hyper-synthesis copies see; and the comparison notebook records what the library measures.
"""

from __future__ import annotations

import copy
import json
import math
import os

import imagecodecs
import numpy as np
import pytest
import torch
from torch.func import functional_call

from conftest import TINY_BASE_RATE, TINY_RATES, make_tiny_base
from test_runner import data_dir  # noqa: F401  (the fixture: a fake bsds500 of 20 small images)
from lpm import zoo
from lpm.checkpoints import CheckpointError, load_codec, save_codec
from lpm.entropy import cpu_float64
from lpm.models import CODEC_KINDS, CodecConfig, LoRACodec, LoRAConfig, LoRALinear, TICCodec, matching_rank
from lpm.train.config import RunConfig, load_config
from lpm.train.stages import STAGE_KINDS, StageContext, ladder
from lpm.train.step import TrainStep

pytestmark = pytest.mark.usefixtures("torch_single_thread")

CONFIGS = zoo.PROJECT_ROOT / "configs"


def _ready_base(seed: int = 0) -> TICCodec:
    base = make_tiny_base(seed)
    base.eval()
    base.update(force=True)
    return base


def _lora(seed: int = 0, rank: int = 3, randomise: bool = True, **cfg) -> tuple[LoRACodec, TICCodec]:
    """A tiny LoRA codec (eval mode, tables built) and an untouched copy of its base. ``randomise`` draws every
    adapter's ``B`` too (fresh adapters are exactly zero), as trained ones are."""
    base = _ready_base(seed)
    ref = copy.deepcopy(base)
    torch.manual_seed(seed + 1)
    model = LoRACodec(base, TINY_RATES, TINY_BASE_RATE, LoRAConfig(rank=rank, **cfg)).eval()
    if randomise:
        g = torch.Generator().manual_seed(seed + 2)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if ".lora_B." in n:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model, ref


def _image(h: int = 64, w: int = 80, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, h // 8, w // 8, generator=g)
    return torch.nn.functional.interpolate(low, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1)


def _bytes(out: dict) -> list[bytes]:
    return [s for strings in out["strings"] for s in strings]


# ------------------------------------------------------------------------------------------ the base, exactly
@pytest.mark.parametrize("rank", [0, 3])
def test_fresh_or_rank0_adapters_are_the_base_exactly(rank):
    model, ref = _lora(rank=rank, randomise=False)
    x = _image()
    with torch.no_grad():
        want = ref(x)
        stream = ref.compress(x)
        for rate in (*TINY_RATES, 0.006):  # trained, base and an interpolated rate
            got = model(x, rate)
            assert torch.equal(got["x_hat"], want["x_hat"]), rate
            assert torch.equal(got["likelihoods"]["y"], want["likelihoods"]["y"])
            assert _bytes(model.compress(x, rate)) == _bytes(stream)
    assert model.parameter_counts()["base"] == ref.num_parameters()
    assert all(v == (0 if rank == 0 else 3 * 2304) for k, v in model.parameter_counts().items() if k.startswith("adapter"))


def test_base_rate_is_bit_exact_and_zeroed_adapters_restore_the_base():
    model, ref = _lora()
    x = _image()
    with torch.no_grad():
        want = ref(x)["x_hat"]
        assert torch.equal(model(x, TINY_BASE_RATE)["x_hat"], want)  # the base rate uses no adapter
        assert _bytes(model.compress(x, TINY_BASE_RATE)) == _bytes(ref.compress(x))
        assert not torch.equal(model(x, TINY_RATES[0])["x_hat"], want)  # trained adapters do act
        for n, p in model.named_parameters():
            if ".lora_B." in n:
                p.zero_()
        for rate in TINY_RATES:
            assert torch.equal(model(x, rate)["x_hat"], want)
    # the base's own tensors keep their names (a LoRA codec's base state is a tic state plus adapters)
    names = {k for k in model.base.state_dict() if ".lora_" not in k}
    assert names == set(ref.state_dict())


def test_config_and_placement():
    assert LoRAConfig().to_dict() == {"rank": 7, "targets": ["qkv", "proj", "fc1", "fc2"],
                                      "transforms": ["g_a", "h_a", "h_s", "g_s"]}
    for bad in ({"rank": -1}, {"rank": 1.5}, {"rank": True}, {"targets": []}, {"targets": ["qkv", "qkv"]},
                {"targets": "qkv"}, {"targets": ["norm1"]}, {"transforms": ["entropy"]}, {"alpha": 2}):
        with pytest.raises(ValueError):
            LoRAConfig.from_dict({**LoRAConfig().to_dict(), **bad})
    model, _ = _lora(targets=["qkv", "fc2"], transforms=["g_s"], randomise=False)
    names = [n for n, _ in model.layers()]
    assert names and all(n.startswith("g_s.") and n.endswith((".attn.qkv", ".mlp.fc2")) for n in names)
    assert len(names) == 2 * 4  # g_s of the tiny config has 2 + 1 + 1 Swin blocks
    assert all(isinstance(m, torch.nn.Linear) for n, m in model.base.named_modules() if n.startswith("g_a.")
               and n.endswith((".qkv", ".proj", ".fc1", ".fc2")))
    with pytest.raises(ValueError, match="already carries"):
        LoRACodec(model.base, TINY_RATES, TINY_BASE_RATE)
    assert CODEC_KINDS["lora"] is LoRACodec


def test_parameter_counts_and_the_rank_that_matches_a_prompt_module():
    tiny = zoo.build("tiny")
    prompt = tiny.parameter_counts()["prompt_r0"]
    assert matching_rank(tiny.base, prompt) == (3, 3 * 2304)
    with torch.device("meta"):
        tic = zoo.build("tic")
    assert tic.parameter_counts()["prompt_r0"] == 301_792
    assert matching_rank(tic.base, 301_792) == (7, 301_056)  # the default rank: same storage per rate
    assert matching_rank(tic.base, 301_792, LoRAConfig(targets=["qkv", "proj"])) == (14, 14 * 28 * 768)
    model, ref = _lora(rank=4, randomise=False)
    counts = model.parameter_counts()
    assert counts == {"base": ref.num_parameters(), "adapter_r0": 4 * 2304, "adapter_r1": 4 * 2304,
                      "total": ref.num_parameters() + 8 * 2304}
    assert model.num_parameters() == counts["total"]
    assert model.storage_ratio() == pytest.approx(counts["total"] / (3 * ref.num_parameters()))


# ------------------------------------------------------------------------------------------ rates
def test_adapter_weights_interpolate_updates_in_log_lambda():
    model, _ = _lora(randomise=False)
    lo, mid, base = TINY_RATES
    assert model.adapter_weights(base) == ()
    assert model.adapter_weights(lo) == (("r0", 1.0),)
    r = math.exp(0.25 * math.log(lo) + 0.75 * math.log(mid))
    (ka, wa), (kb, wb) = model.adapter_weights(r)
    assert (ka, kb) == ("r0", "r1") and wa == pytest.approx(0.25) and wb == pytest.approx(0.75)
    r = math.exp(0.5 * math.log(mid) + 0.5 * math.log(base))
    ((k, w),) = model.adapter_weights(r)  # between the base and its neighbour: the neighbour's update, faded
    assert k == "r1" and w == pytest.approx(0.5)
    with pytest.raises(ValueError):
        model.adapter_weights(1.0)


def test_interpolated_forward_is_the_interpolated_weight_update():
    model, _ = _lora()
    lo, mid, _ = TINY_RATES
    r = math.exp(0.3 * math.log(lo) + 0.7 * math.log(mid))
    model.backbone(r)
    name, layer = model.layers()[5]
    x = torch.randn(2, 7, layer.in_features, dtype=torch.float64)
    layer64 = copy.deepcopy(layer).double()
    w = layer64.weight + 0.3 * layer64.delta("r0") + 0.7 * layer64.delta("r1")
    assert torch.allclose(layer64(x), torch.nn.functional.linear(x, w, layer64.bias), atol=1e-12), name


# ------------------------------------------------------------------------------------------ merging
def test_merge_unmerge_round_trip_and_same_stream():
    model, _ = _lora()
    x = _image(64, 80, seed=3)
    rate = TINY_RATES[0]
    with torch.no_grad():
        before = model(x, rate)["x_hat"]
        out = model.compress(x, rate)
        dec = model.decompress(out["strings"], out["shape"], rate, table_checks=out["table_checks"])["x_hat"]
        model.merge(rate)
        assert model.merged_rate == rate and all(m.merged_weight is not None for _, m in model.layers())
        merged_fwd = model(x, rate)["x_hat"]
        merged_dec = model.decompress(out["strings"], out["shape"], rate, table_checks=out["table_checks"])["x_hat"]
        merged_out = model.compress(x, rate)
        other = model(x, TINY_RATES[1])["x_hat"]  # other rates keep the low-rank paths
        model.unmerge()
        after = model(x, rate)["x_hat"]
        assert torch.equal(other, model(x, TINY_RATES[1])["x_hat"])
    assert torch.equal(before, after)  # unmerge restores the unmerged computation exactly
    assert 0 < (merged_fwd - before).abs().max() < 1e-4  # merged: another float32 rounding, nothing more
    assert (merged_dec - dec).abs().max() < 1e-4
    assert merged_out["table_checks"] == out["table_checks"]  # tables from the float64 low-rank h_s at both ends
    # merged weights are never saved and drop on training mode / load
    model.merge(rate)
    assert not any("merged" in k for k in model.state_dict())
    model.train()
    assert model.merged_rate is None and all(m.merged_weight is None for _, m in model.layers())
    model.eval().merge(rate)
    model.load_state_dict(model.state_dict())
    assert model.merged_rate is None


def test_merge_at_base_rate_and_training_mode_use_no_merged_weights():
    model, ref = _lora()
    x = _image()
    model.merge(TINY_BASE_RATE)
    with torch.no_grad():
        assert torch.equal(model(x, TINY_BASE_RATE)["x_hat"], ref(x)["x_hat"])
    model.merge(TINY_RATES[0])
    model.training = True  # as under a training loop that set the flag only
    model.backbone(TINY_RATES[0])
    assert not any(m.use_merged for _, m in model.layers())


# ------------------------------------------------------------------------------------------ parameters everywhere
def test_float64_copies_functional_call_and_double():
    model, _ = _lora()
    rate = TINY_RATES[1]
    model.backbone(rate)
    hs = model.base.h_s
    z = torch.randn(1, 16, 2, 3)
    with torch.no_grad():
        want = hs(z)
        got64 = cpu_float64(hs)(z.double())
        assert got64.dtype == torch.float64 and (got64.float() - want).abs().max() < 1e-4
        # functional_call: the adapters come from the given tensors (nothing cached)
        params = {k: v.detach().double() if v.is_floating_point() else v
                  for k, v in [*hs.named_parameters(), *hs.named_buffers()]}
        assert any(".lora_A." in k for k in params)
        assert torch.allclose(functional_call(hs, params, (z.double(),)), got64, atol=1e-12)
        zeroed = {k: torch.zeros_like(v) if ".lora_B." in k else v for k, v in params.items()}
        plain = copy.deepcopy(hs)
        for _, m in plain.named_modules():
            if isinstance(m, LoRALinear):
                m.active = ()
        assert torch.allclose(functional_call(hs, zeroed, (z.double(),)), cpu_float64(plain)(z.double()), atol=1e-12)
        # merged: a float64 copy uses the low-rank form (merged weights are float32 only)
        model.merge(rate)
        model.backbone(rate)
        assert torch.allclose(cpu_float64(hs)(z.double()), got64, atol=1e-12)
        model.unmerge()
        x = _image(64, 64)
        f32 = model.backbone(rate).g_a(x)  # (compressai's entropy models do not run in float64: transforms only)
        m64 = copy.deepcopy(model).double()
        f64 = m64.backbone(rate).g_a(x.double())
        assert not torch.equal(f32, model.backbone(TINY_BASE_RATE).g_a(x))
    assert f64.dtype == torch.float64 and (f64.float() - f32).abs().max() < 1e-3
    assert all(p.dtype == torch.float64 for p in m64.adapter_parameters())


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model, _ = _lora(rank=7)  # the default config: what lpm.checkpoints rebuilds today
    model.update(force=True)
    path = tmp_path / "lora.safetensors"
    save_codec(path, model, meta={"budget": "test"})
    loaded = load_codec(path)
    assert loaded.kind == "lora" and isinstance(loaded.model, LoRACodec)
    assert loaded.metadata["lora_config"] == json.dumps(LoRAConfig().to_dict())
    x = _image()
    for rate in (TINY_RATES[0], 0.006, TINY_BASE_RATE):
        out = model.compress(x, rate)
        assert _bytes(loaded.model.compress(x, rate)) == _bytes(out)
    # another config rebuilds exactly its layout from its fields; through load_codec it loads right or is
    # refused (until the loader passes `lora_config` on), never silently with other adapters
    other, _ = _lora(rank=2, targets=["qkv"])
    fields = {"rates": other.rates, "base_rate": other.base_rate, "lora_config": other.lora_config.to_dict()}
    rebuilt = LoRACodec.from_checkpoint(TICCodec(CodecConfig.from_dict(other.base.config.to_dict())), fields)
    tables = ("_quantized_cdf", "_offset", "_cdf_length", "scale_table")  # sized by update(), not by the config
    shapes = lambda m: {k: v.shape for k, v in m.state_dict().items() if not k.endswith(tables)}  # noqa: E731
    assert shapes(rebuilt) == shapes(other)
    other.update(force=True)
    save_codec(tmp_path / "r2.safetensors", other, meta={})
    try:
        back = load_codec(tmp_path / "r2.safetensors").model
    except CheckpointError as e:
        assert "weights do not fit the stored config" in str(e) and ".lora_" in str(e)
    else:
        assert back.lora_config == other.lora_config
        assert _bytes(back.compress(x, TINY_RATES[0])) == _bytes(other.compress(x, TINY_RATES[0]))


# ------------------------------------------------------------------------------------------ training
def _lora_stages(base: TICCodec, **cfg):
    run = RunConfig(name="test", kind="lora", model="tiny", init="in memory", **cfg)
    return STAGE_KINDS["lora"].build(StageContext(run, base, ladder(run), [], torch.device("cpu")))


def test_only_adapter_parameters_reach_the_optimizer():
    base = _ready_base()
    stages = _lora_stages(base, rates=list(TINY_RATES), base_rate=TINY_BASE_RATE, lora={"rank": 2})
    assert [s.rate for s in stages] == [0.013, 0.0035] and all(s.aux is None for s in stages)
    codec = stages[0].model
    for stage in stages:
        assert {id(p) for p in stage.params} == {id(p) for p in codec.adapter_parameters(stage.rate)}
    stage = stages[0]
    stage.prepare(True)
    frozen = {k: v.clone() for k, v in codec.state_dict().items() if f".{codec.key(stage.rate)}" not in k}
    seen = []
    orig = torch.optim.Adam.__init__

    def spy(self, params, *a, **kw):
        params = list(params)
        seen.append(params)
        orig(self, params, *a, **kw)

    torch.optim.Adam.__init__ = spy
    try:
        step = TrainStep(stage.forward, stage.params, lmbda=stage.rate, lr=1e-2, aux=None)
    finally:
        torch.optim.Adam.__init__ = orig
    assert len(seen) == 1 and {id(p) for p in seen[0]} == {id(p) for p in codec.adapter_parameters(stage.rate)}
    codec.train()
    g = torch.Generator().manual_seed(0)
    for _ in range(2):
        step(torch.rand(2, 3, 64, 64, generator=g))
    after = codec.state_dict()
    assert all(torch.equal(after[k], v) for k, v in frozen.items())  # base and other rates untouched
    own_b = [p for p in codec.adapter_parameters(stage.rate) if p.shape[-1] == 2]
    assert any(p.abs().sum() > 0 for p in own_b)  # B moved off zero: the adapter learned
    # a stage refuses a base that is not frozen
    next(p for _, p in codec.base_parameters()).requires_grad_(True)
    with pytest.raises(RuntimeError, match="frozen"):
        stages[1].prepare(True)


def test_progressive_initialisation_from_the_neighbour():
    base = _ready_base()
    rates = [0.0067, 0.013, 0.025, 0.0483]
    stages = _lora_stages(base, rates=rates, base_rate=0.013, lora={"rank": 2})
    assert [s.rate for s in stages] == [0.025, 0.0067, 0.0483]  # nearest the base (in log λ) first, both sides
    codec = stages[0].model
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # stand-ins for trained adapters
        for p in codec.adapter_parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    before = {k: v.clone() for k, v in codec.state_dict().items()}
    key = {r: codec.key(r) for r in rates if r != 0.013}
    stages[2].prepare(True)  # 0.0483 starts from 0.025, its neighbour on the base side
    for _, layer in codec.layers():
        assert torch.equal(layer.lora_A[key[0.0483]], layer.lora_A[key[0.025]])
        assert torch.equal(layer.lora_B[key[0.0483]], layer.lora_B[key[0.025]])
    stages[1].prepare(True)  # 0.0067 is the first below the base: a fresh adapter (ΔW = 0)
    for _, layer in codec.layers():
        assert torch.count_nonzero(layer.lora_B[key[0.0067]]) == 0 and layer.lora_A[key[0.0067]].abs().sum() > 0
    assert [p.requires_grad for p in codec.adapter_parameters()] == \
        [k == key[0.0067] for _, layer in codec.layers() for k in codec.adapter_keys for _ in (0, 1)]
    # resumed stages (fresh=False) keep the adapter as it is
    state = codec.state_dict()
    stages[0].prepare(False)
    assert all(torch.equal(state[k], v) for k, v in codec.state_dict().items())
    assert any(not torch.equal(before[k], v) for k, v in codec.state_dict().items())


def test_run_configs():
    with pytest.raises(ValueError, match="needs `init:`"):
        RunConfig(name="x", kind="lora")
    with pytest.raises(ValueError, match="belong to a lora run"):
        RunConfig(name="x", kind="prompts", init="x", lora={"rank": 2})
    with pytest.raises(ValueError, match="lora config"):
        RunConfig(name="x", kind="lora", init="x", lora={"rank": -3})
    # the GPU campaign's and the smoke runs' adapters get the prompt modules' budget exactly
    for lora_name, prompts_name in (("reduced-lora", "reduced-prompts"), ("tiny-smoke-lora", "tiny-smoke-prompts")):
        a = load_config(CONFIGS / f"{lora_name}.yaml").to_dict()
        b = load_config(CONFIGS / f"{prompts_name}.yaml").to_dict()
        assert a["kind"] == "lora" and LoRAConfig.from_dict(a["lora"]) == LoRAConfig()
        same = ("model", "init", "rates", "base_rate", "steps", "lr", "lr_drops", "seed", "data", "clip", "bf16")
        assert {k: a[k] for k in same} == {k: b[k] for k in same}, lora_name


# ------------------------------------------------------------------------------------------ the comparison
def test_comparison_helpers():
    from lpm.eval.compare import between_rates, gaps_between, ledger_budget

    mids = between_rates([0.01, 0.04, 0.16], 1)
    assert mids == pytest.approx([0.02, 0.08])
    pts = [{"rate": r, "trained": t, "bpp": b} for r, t, b in
           [(0.01, True, 0.1), (0.02, False, 0.2), (0.04, True, 0.3), (0.08, False, 0.1), (0.16, True, 0.5)]]
    assert gaps_between(pts, "bpp") == (1, 2)
    rec = lambda run, kind, seen, crops, cpu: {"run": run, "kind": kind, "model": f"{kind}-{crops}", "rate": 0.1,  # noqa: E731
                                               "images_seen": seen, "crops_seen": crops, "gpu_minutes": 0.0,
                                               "cpu_minutes": cpu}
    info = {"meta": {"ledger": [rec("b", "base", 500, 8000, 10.0), rec("l", "lora", 50, 1200, 1.0),
                                rec("l", "lora", 50, 1201, 2.0)]}}
    got = ledger_budget([info, info])  # the same records twice (e.g. two files of one run) count once
    assert (got["train_images"], got["train_crops"], got["train_cpu_minutes"]) == (50, 2401, 3.0)
    assert (got["base_crops"], got["base_minutes"]) == (8000, 10.0)
    assert ledger_budget([{"meta": {}}])["train_images"] is None


def test_comparison_notebook_records_what_the_library_measures(tmp_path):
    """notebooks/comparison.ipynb under papermill (SMOKE, two generated images, both smoke checkpoints): its
    record equals :func:`lpm.eval.compare.compare_methods` run afresh in another folder (bytes and parameter
    counts exactly, PSNR to 1e-9; timings are measurements and only checked to be positive)."""
    import papermill as pm

    from lpm import figures
    from lpm.eval.compare import METHODS, NO_CHECKPOINT, compare_methods

    from test_notebooks import _ensure_python3_kernel

    _ensure_python3_kernel()
    data = tmp_path / "images"
    data.mkdir()
    rng = np.random.default_rng(2)
    for i in range(2):
        yy, xx = np.mgrid[0:128, 0:160]
        img = np.stack([np.sin(xx / (5 + 3 * i)) * 90 + 125, np.cos(yy / 7) * 80 + 120, (xx + yy) / 1.3], -1)
        (data / f"pic{i}.png").write_bytes(imagecodecs.png_encode(np.clip(img + rng.normal(0, 6, img.shape), 0, 255)
                                                                   .astype(np.uint8)))
    results = tmp_path / "results"
    nb_dir = zoo.PROJECT_ROOT / "notebooks"
    pm.execute_notebook(str(nb_dir / "comparison.ipynb"), str(tmp_path / "comparison.ipynb"),
                        parameters=dict(SMOKE=True, RESULTS_DIR=str(results), DATA_DIR=os.path.relpath(data, zoo.PROJECT_ROOT)),
                        kernel_name="python3", progress_bar=False, cwd=str(nb_dir))
    rec = json.loads((results / "records" / "comparison.json").read_text())
    assert rec["smoke"] is True and rec["checkpoint"]["name"] == "tiny-smoke-prompts-only"
    assert "NOT the paper's" in rec["checkpoint"]["budget"]
    for name in ("comparison", "comparison_full", "comparison_points"):
        assert (results / "tables" / f"{name}.md").is_file()
    assert (results / "figures" / "comparison_rd.png").is_file()
    n = rec["numbers"]

    ctx = figures.setup(["tiny-smoke-prompts-only", "tiny-smoke", "tiny-smoke-hidden", "tiny-smoke-lora"], data,
                        tmp_path / "direct", True)
    direct = compare_methods(ctx.checkpoints, ctx.images, ctx.results_dir, smoke=True, per_gap=1)
    rows, want = n["table"], direct.table.to_dict(orient="records")
    assert [r["method"] for r in rows] == [w["method"] for w in want] == [m.title for m in METHODS]
    for r, w in zip(rows, want):
        if w["checkpoint"] is None:  # no checkpoint: a row that says so, and no numbers
            assert r["budget"] == NO_CHECKPOINT and r["params_stored"] is None and r["bd_rate_vs_vtm_percent"] is None
            continue
        assert r["budget"] == w["budget"] and "NOT the paper's" in r["budget"]
        for k in ("checkpoint", "K_rates", "params_stored", "params_per_extra_rate", "train_images", "train_crops",
                  "train_cpu_minutes", "base_crops", "monotone_bpp", "monotone_psnr", "gaps_smooth_bpp", "same_base",
                  "continuous_rate", "vs_vtm_note", "bpp_min", "bpp_max"):
            assert r[k] == w[k], (w["checkpoint"], k)
        for k in ("bd_rate_vs_lpm_percent", "psnr_min", "psnr_max"):
            assert r[k] == pytest.approx(w[k], abs=1e-9), (w["checkpoint"], k)
        assert r["encode_time_vs_base"] > 0 and r["decode_time_vs_base"] > 0
        assert r["same_base"] is True and r["K_rates"] == 6 and r["bd_rate_vs_vtm_percent"] is None  # not Kodak
    by = {r["checkpoint"]: r for r in rows if r["checkpoint"]}
    lora, prompts, gain = by["tiny-smoke-lora"], by["tiny-smoke-prompts-only"], by["tiny-smoke"]
    hidden = by["tiny-smoke-hidden"]
    assert (prompts["method"], gain["method"]) == ("LPM prompt modules", "LPM prompt modules + latent gain")
    assert hidden["method"] == "LPM modules, token-fed prompts" and hidden["params_per_extra_rate"] == 6_924
    assert (hidden["train_images"], hidden["train_crops"]) == (50, 6000)
    # the same budget: same shared base, the same images and crops for the rate-specific part
    assert (lora["train_images"], lora["train_crops"]) == (prompts["train_images"], prompts["train_crops"]) \
        == (gain["train_images"], gain["train_crops"]) == (50, 6000)
    assert lora["params_per_extra_rate"] == 16_128 and gain["params_per_extra_rate"] == 6_984
    assert prompts["params_per_extra_rate"] == 6_960  # the gain's 24 log-gains (M=24) per rate fewer
    # the paper's method (prompts alone) is the LPM reference, not the gain variant listed after it
    assert prompts["bd_rate_vs_lpm_percent"] == 0.0 and gain["vs_lpm_note"] != "reference itself"
    assert [p["bpp"] for p in n["points"]] == [p["bpp"] for p in direct.points.to_dict(orient="records")]
    assert sum(p["trained"] for p in n["points"]) == 24 and len(n["points"]) == 44  # 6 trained + 5 in-between, x4
    # merged vs unmerged decoding of one stream: the same tables, pixels within float32 rounding
    assert n["merge"]["tiny-smoke-lora"]["max_abs_diff"] < 1e-4 and n["merge"]["tiny-smoke-lora"]["max_abs_diff_8bit"] <= 1


# ------------------------------------------------------------------------------------------ lpm train
def test_lora_run_through_the_runner_resumes_exactly(tmp_path, data_dir, monkeypatch):  # noqa: F811
    """``kind: lora`` through :class:`Runner` on image folders: progressive stages on the prompts' seeded subset,
    a checkpoint that loads and codes, budget records of kind ``lora``; killed in the second stage and
    resumed, it ends with exactly the weights of an uninterrupted run."""
    from lpm.train.runner import Runner
    from lpm.train.sampler import CropSampler

    from test_runner import _cfg

    Runner(_cfg(tmp_path, data_dir, out_dir=str(tmp_path / "base"), steps=2), progress=False).run()
    init = str(tmp_path / "base" / "model.safetensors")
    # the first load_codec of a config builds its layout on the meta device, which draws from the CPU RNG, and
    # caches it: load once so that every run below starts from the same RNG state (separate processes do)
    load_codec(init)
    common = dict(kind="lora", init=init, rates=[0.0035, 0.013, 0.0483], steps=3, checkpoint_every=2,
                  lora={"rank": 7}, data={"dir": str(data_dir), "crop": 32, "batch": 2, "on_device": False,
                                          "fraction": 0.5})
    ref = Runner(_cfg(tmp_path, data_dir, out_dir=str(tmp_path / "ref"), **common), progress=False)
    written = ref.run()
    assert len(written) == 2 and [s.name for s in ref.stages] == ["lora-0.013", "lora-0.0035"]
    prompts = Runner(_cfg(tmp_path, data_dir, out_dir=str(tmp_path / "p"), **{**common, "kind": "prompts",
                                                                               "lora": None}), progress=False)
    assert [p.name for p in prompts._stages()[0].paths] == [p.name for p in ref.stages[0].paths]  # same subset
    ck = load_codec(written[-1])
    assert ck.kind == "lora" and isinstance(ck.model, LoRACodec) and "lora run" in ck.budget
    ledger = [json.loads(line) for line in (tmp_path / "ref" / "ledger.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in ledger] == ["lora", "lora"] and all(r["images_seen"] == 10 for r in ledger)
    x = torch.rand(1, 3, 40, 48)
    c = ck.model.compress(x, 0.007)
    y = ck.model.decompress(c["strings"], c["shape"], 0.007, size=(40, 48), table_checks=c["table_checks"])["x_hat"]
    assert y.shape == x.shape
    base = load_codec(init).model
    with torch.no_grad():
        assert torch.equal(ck.model(x, 0.0483)["x_hat"], base.eval()(x)["x_hat"])  # the base stayed frozen

    real_next, calls = CropSampler.next, {"n": 0}

    def dying_next(self):
        calls["n"] += 1
        if calls["n"] == 5:  # step 2 of the second stage; the state was saved at the end of the first
            raise RuntimeError("killed")
        return real_next(self)

    monkeypatch.setattr(CropSampler, "next", dying_next)
    with pytest.raises(RuntimeError, match="killed"):
        Runner(_cfg(tmp_path, data_dir, out_dir=str(tmp_path / "kill"), **common), progress=False).run()
    monkeypatch.setattr(CropSampler, "next", real_next)
    Runner(_cfg(tmp_path, data_dir, out_dir=str(tmp_path / "kill"), **common), progress=False).run(resume=True)
    want = load_codec(tmp_path / "ref" / "model.safetensors").model.state_dict()
    got = load_codec(tmp_path / "kill" / "model.safetensors").model.state_dict()
    bad = [k for k in want if not torch.equal(want[k], got[k])]
    assert not bad, (bad[:5], len(bad), [float((want[k] - got[k]).abs().max()) for k in bad[:3]])


def test_non_default_lora_config_round_trips_and_loading_leaves_the_rng_alone(tmp_path):
    """A LoRA checkpoint of another rank/targets/transforms loads as saved (its lora_config is read back), a
    tampered lora_config is refused, and loading does not consume torch's CPU random state (the meta-device
    layout build used to, so two seeded runs in one process started differently)."""
    cfg = LoRAConfig(rank=2, targets=("qkv", "fc2"), transforms=("g_s", "h_s"))
    model = LoRACodec(make_tiny_base(), list(TINY_RATES), TINY_BASE_RATE, cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    model.update(force=True)
    path = tmp_path / "lora.safetensors"
    save_codec(path, model, meta={"budget": "test"})
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    loaded = load_codec(path)
    assert torch.equal(torch.rand(3), expected)
    assert loaded.model.lora_config == cfg
    ref, got = model.state_dict(), loaded.model.state_dict()
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)

    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), "pt") as f:
        md = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    md["lora_config"] = json.dumps({**json.loads(md["lora_config"]), "rank": -1})
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata=md)
    with pytest.raises(CheckpointError, match="rank"):
        load_codec(bad)
