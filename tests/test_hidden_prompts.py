"""Prompts computed from each Swin block's own tokens (``PromptConfig.enc_source/dec_source = "hidden"``).

The other reading of the paper's "hidden features" (lpm.layers.prompt.HiddenPromptNet): every block's prompt
map comes from a head applied to that block's normalised input tokens, instead of from one trunk fed by the
image / the latents. These tests pin the layer contract (a callable in place of a map is exactly the map it
makes from ``LN(x)``), the codec paths (real bitstreams at trained and interpolated rates, exact entropy
tables, tiling, checkpoints) and that training reaches every head and nothing of the base.
"""

from __future__ import annotations

import math

import pytest
import torch

import lpm.models.base as base_mod
from conftest import TINY_BASE_RATE, TINY_RATES, make_tiny_base, make_tiny_codec
from lpm.layers import HiddenPromptHead, HiddenPromptNet, PromptTarget, SwinBlock
from lpm.models import PromptConfig, PromptedCodec, prompt_settings
from lpm.models.base import TICCodec
from lpm.models.baselines import RateConditionedCodec

pytestmark = pytest.mark.usefixtures("torch_single_thread")

DIM = 16
RATE = 0.013  # a prompted (non-base) rate of the tiny codec


def _block(seed: int = 0, shift: int = 0) -> SwinBlock:
    torch.manual_seed(seed)
    blk = SwinBlock(DIM, 2, 8, shift=shift)
    with torch.no_grad():
        blk.norm1.weight.uniform_(0.5, 1.5)
        blk.norm1.bias.normal_(0.0, 0.2)
    return blk.eval()


@pytest.mark.parametrize("size", [(8, 8), (13, 9), (1, 1), (16, 24)])
@pytest.mark.parametrize("additive", [False, True])
def test_a_callable_prompt_is_the_map_it_makes_from_the_normalised_tokens(size, additive):
    h, w = size
    blk = _block(shift=4 if h >= 8 else 0)
    torch.manual_seed(1)
    head = HiddenPromptHead(DIM, 5, stride=2, init_scale=1.0, additive=additive)
    if additive:
        with torch.no_grad():
            head.out.weight.normal_(0, 0.3)  # give the added half something to do
    x = torch.randn(2, h, w, DIM)
    with torch.no_grad():
        by_hand = head(blk.norm1(x).permute(0, 3, 1, 2))
        assert by_hand.shape == (2, DIM * (2 if additive else 1), math.ceil(h / 2), math.ceil(w / 2))
        for logit in (None, math.log(0.3)):
            torch.testing.assert_close(blk(x, head, logit), blk(x, by_hand, logit), atol=1e-6, rtol=0)
        assert (blk(x, head) - blk(x)).abs().max() > 1e-3  # and it does prompt


def test_a_callable_that_returns_no_tensor_or_a_wrong_map_is_refused():
    blk = _block()
    x = torch.randn(1, 8, 8, DIM)
    with pytest.raises(TypeError, match="must return a tensor"):
        blk(x, lambda t: None)
    with pytest.raises(ValueError, match="does not fit"):
        blk(x, lambda t: torch.zeros(1, DIM, 3, 3))
    with pytest.raises(ValueError, match="16 channels"):
        HiddenPromptHead(DIM, 4)(torch.zeros(1, 8, 4, 4))


def test_hidden_prompt_net_serves_every_block_and_starts_gently():
    targets = [PromptTarget("g_a.0", 1, 16, 2), PromptTarget("h_a.0", 5, 16, 1)]
    torch.manual_seed(0)
    net = HiddenPromptNet(7, targets, stride=2, init_scale=0.1)
    heads = net(torch.zeros(1))  # the input is ignored
    assert {k: len(v) for k, v in heads.items()} == {"g_a.0": 2, "h_a.0": 1}
    assert len({id(h) for v in heads.values() for h in v}) == 3
    # parameters: per block conv2x2 (16→7) + conv1x1 (7→16), with biases
    assert sum(p.numel() for p in net.parameters()) == 3 * (16 * 7 * 4 + 7 + 7 * 16 + 16)
    add = HiddenPromptNet(7, targets, additive=True)
    out = add(None)["g_a.0"][0](torch.randn(1, 16, 6, 6))
    assert out.shape == (1, 32, 3, 3) and out[:, 16:].abs().max() == 0 and out[:, :16].abs().max() > 0
    with pytest.raises(ValueError, match="at least one"):
        HiddenPromptNet(7, [])


@pytest.mark.parametrize("sources", [("hidden", "latent"), ("image", "hidden"), ("hidden", "hidden")])
def test_hidden_sources_code_real_bitstreams_at_trained_and_interpolated_rates(sources):
    model = make_tiny_codec(seed=2, enc_source=sources[0], dec_source=sources[1])
    plain = make_tiny_codec(seed=2)
    kinds = {"encoder": type(model.module(RATE).encoder).__name__, "decoder": type(model.module(RATE).decoder).__name__}
    assert kinds == {"encoder": "HiddenPromptNet" if sources[0] == "hidden" else "PromptNet",
                     "decoder": "HiddenPromptNet" if sources[1] == "hidden" else "PromptNet"}
    x = torch.rand(1, 3, 40, 56, generator=torch.Generator().manual_seed(3))
    lo = min(TINY_RATES)
    for rate in (RATE, TINY_BASE_RATE, math.sqrt(lo * RATE), math.sqrt(RATE * TINY_BASE_RATE), lo):
        c = model.compress(x, rate)
        dec = model.decompress(c["strings"], c["shape"], rate, size=(40, 56), table_checks=c["table_checks"])["x_hat"]
        with torch.no_grad():
            ref = model(x, rate)["x_hat"].clamp(0, 1)
        assert (dec - ref).abs().max() <= 1e-5
    with torch.no_grad():
        assert (model(x, RATE)["x_hat"] - plain(x, RATE)["x_hat"]).abs().max() > 1e-3
        # the base rate has no prompts: the base bit for bit, whatever the source
        torch.testing.assert_close(model(x, TINY_BASE_RATE)["x_hat"], plain(x, TINY_BASE_RATE)["x_hat"], atol=0, rtol=0)


def test_interpolated_hidden_prompts_mix_the_heads_outputs_layer_by_layer():
    model = make_tiny_codec(seed=5, enc_source="hidden", dec_source="hidden")
    a, b = sorted(r for r in TINY_RATES if r < TINY_BASE_RATE)[-2:]
    mid = math.sqrt(a * b)
    src = model.prompt_source(mid)
    tokens = torch.randn(1, DIM, 10, 6)
    for side in ("encoder", "hyper_decoder", "decoder"):
        mixed = getattr(src, side)(None)
        ha, hb = getattr(model.module(a), side)(None), getattr(model.module(b), side)(None)
        for name in mixed:
            for m, p, q in zip(mixed[name], ha[name], hb[name]):
                with torch.no_grad():
                    torch.testing.assert_close(m(tokens), 0.5 * p(tokens) + 0.5 * q(tokens), atol=1e-6, rtol=1e-6)


def test_hidden_prompts_tile_and_decode_whole(monkeypatch):
    """Tiled analysis with heads on the tokens: g_a's heads run per tile, h_a's once on the stitched y; the
    tiled decoder runs g_s's heads per tile. Both stay within half an LSB of whole-image coding."""
    model = make_tiny_codec(seed=4, enc_source="hidden", dec_source="hidden")
    g = torch.Generator().manual_seed(5)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 256), torch.linspace(0, 1, 192), indexing="ij")
    x = (torch.stack([xx, yy, 0.5 + 0.4 * torch.sin(9 * xx + 5 * yy)])[None] + 0.05 * torch.rand(1, 3, 256, 192, generator=g)).clamp(0, 1)

    def code():
        out = model.compress(x, RATE)
        return out, model.decompress(out["strings"], out["shape"], RATE, size=x.shape[-2:],
                                     table_checks=out["table_checks"])["x_hat"]

    monkeypatch.setattr(base_mod, "TILE", 1 << 20)
    out, whole = code()
    monkeypatch.setattr(base_mod, "TILE", 64)
    tiled = model.decompress(out["strings"], out["shape"], RATE, size=x.shape[-2:],
                             table_checks=out["table_checks"])["x_hat"]
    assert (tiled - whole).abs().max().item() <= 0.5 / 255
    t_out, t_dec = code()
    assert torch.isfinite(t_dec).all() and (t_dec - whole).abs().max().item() <= 0.5 / 255
    bits, ref = (sum(len(s[0]) for s in o["strings"]) * 8 for o in (t_out, out))
    assert abs(bits - ref) <= 0.01 * ref + 64


def test_hidden_prompt_checkpoints_round_trip_and_old_configs_keep_the_default(tmp_path):
    from lpm.checkpoints import load_codec, save_codec

    model = make_tiny_codec(seed=6, enc_source="hidden", dec_source="hidden")
    path = tmp_path / "hidden.safetensors"
    save_codec(path, model)
    back = load_codec(path).model.eval()
    assert (back.prompt_config.enc_source, back.prompt_config.dec_source) == ("hidden", "hidden")
    x = torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(7))
    c = model.compress(x, RATE)
    torch.testing.assert_close(back.decompress(c["strings"], c["shape"], RATE, size=(32, 48))["x_hat"],
                               model.decompress(c["strings"], c["shape"], RATE, size=(32, 48))["x_hat"], atol=0, rtol=0)
    # a config written before the field existed reads as the default sources
    old = {k: v for k, v in PromptConfig().to_dict().items() if k not in ("enc_source", "dec_source")}
    cfg = PromptConfig.from_dict(old)
    assert (cfg.enc_source, cfg.dec_source) == ("image", "latent")
    # a checkpoint of the image-fed layout does not load into a hidden-fed model (different tensors)
    plain = make_tiny_codec(seed=6)
    with pytest.raises(RuntimeError):
        PromptedCodec(make_tiny_base(6), list(TINY_RATES), TINY_BASE_RATE,
                      PromptConfig(8, 0, 8, 0, enc_source="hidden")).load_state_dict(plain.state_dict())


def test_bad_sources_are_refused_with_the_field_named():
    for field, value in (("enc_source", "latent"), ("dec_source", "image"), ("enc_source", 1), ("dec_source", "")):
        with pytest.raises(ValueError, match=field):
            PromptConfig(**{field: value})
    assert prompt_settings(["enc_source=hidden", "dec_source=hidden"]) == {"enc_source": "hidden", "dec_source": "hidden"}
    with pytest.raises(ValueError, match="dec_source"):
        prompt_settings(["dec_source=tokens"])
    for cfg in (PromptConfig(enc_source="hidden"), PromptConfig(dec_source="hidden"), PromptConfig(additive=True)):
        with pytest.raises(ValueError, match="RateConditionedCodec"):
            RateConditionedCodec(make_tiny_base(), list(TINY_RATES), cfg)


def test_training_reaches_every_hidden_head_and_nothing_of_the_base():
    model = make_tiny_codec(seed=8, strong_prompts=False, ready=False, enc_source="hidden", dec_source="hidden")
    model.train()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(9))
    out = model(x, RATE)
    bpp = sum(l.log2().sum() for l in out["likelihoods"].values()) / (-2 * 64 * 64)
    loss = RATE * 255**2 * ((out["x_hat"] - x) ** 2).mean() + bpp
    loss.backward()
    module = model.module(RATE)
    missing = [n for n, p in module.named_parameters() if p.grad is None or p.grad.abs().max() == 0]
    assert not missing, missing
    assert all(p.grad is None for p in model.base.parameters())
    others = [m for k, m in model.prompts.items() if m is not module]
    assert all(p.grad is None for m in others for p in m.parameters())


@pytest.mark.parametrize("sources", [("image", "latent"), ("hidden", "hidden")])
def test_prompt_stride_one_gives_a_prompt_token_per_image_token_and_codes(sources):
    """``prompt_stride=1`` (maps at the stage's own stride): the prompt nets make maps at the tokens'
    resolution (they used to be laid out for stride 2 whatever the config said, and the first forward failed)."""
    from conftest import TINY_BASE

    torch.manual_seed(0)
    base = TICCodec(**{**TINY_BASE, "prompt_stride": 1})
    assert {t.name: t.level for t in base.prompt_targets()["encoder"]} == {"g_a.0": 1, "g_a.1": 2, "g_a.2": 3, "h_a.0": 5}
    model = PromptedCodec(base, list(TINY_RATES), TINY_BASE_RATE,
                          PromptConfig(8, 0, 8, 0, enc_source=sources[0], dec_source=sources[1], head_init_scale=1.0))
    model.eval().update(force=True)
    x = torch.rand(1, 3, 40, 56, generator=torch.Generator().manual_seed(1))
    if sources[0] == "image":
        maps = model.module(RATE).encoder(model.base.pad(x))
        assert maps["g_a.0"][0].shape[-2:] == (32, 32)  # the 64x64 padded image at stride 2, one map pixel per token
    c = model.compress(x, RATE)
    dec = model.decompress(c["strings"], c["shape"], RATE, size=(40, 56), table_checks=c["table_checks"])["x_hat"]
    with torch.no_grad():
        assert (dec - model(x, RATE)["x_hat"].clamp(0, 1)).abs().max() <= 1e-5
    with pytest.raises(ValueError, match="prompt_stride"):
        TICCodec(**{**TINY_BASE, "prompt_stride": 4})


def test_with_prompt_stride_is_the_same_codec_laid_out_anew():
    base = make_tiny_base(3).eval()
    base.update(force=True)
    copy = base.with_prompt_stride(1)
    assert copy.config.prompt_stride == 1 and base.config.prompt_stride == 2
    assert all(torch.equal(v, copy.state_dict()[k]) for k, v in base.state_dict().items())
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert base.compress(x)["strings"] == copy.compress(x)["strings"]
    with pytest.raises(ValueError, match="prompt_stride"):
        base.with_prompt_stride(4)


def test_a_prompts_run_at_prompt_stride_one_trains_token_fed_modules_on_the_same_frozen_base(tmp_path):
    from conftest import tiny_base_checkpoint
    from lpm.checkpoints import load_codec
    from lpm.train.runner import RunConfig, Runner

    base_file = tiny_base_checkpoint(tmp_path)
    settings = {"enc_source": "hidden", "dec_source": "hidden", "additive": True, "enc_channels": 3, "dec_channels": 3}
    cfg = dict(name="h", kind="prompts", model="tiny", init=str(base_file), rates=[0.013, 0.025], base_rate=0.013,
               prompt=settings, prompt_stride=1, steps=2, lr=1e-3, lr_drops=[], out_dir=str(tmp_path / "run"),
               data={"dir": str(tmp_path), "crop": 32, "batch": 2, "fraction": 0.5, "on_device": False})
    (path, *_) = Runner(RunConfig(**cfg), progress=False).run()
    ck = load_codec(path)
    assert ck.config.prompt_stride == 1 and ck.model.prompt_config.enc_source == "hidden"
    original = load_codec(base_file).model.state_dict()
    assert all(torch.equal(v, ck.model.base.state_dict()[k]) for k, v in original.items())
    for bad, why in (({"prompt_stride": 3}, "1 or 2"), ({"prompt_stride": 1, "kind": "separate"}, "belongs to a prompts")):
        with pytest.raises(ValueError, match=why):
            RunConfig(**{**cfg, **bad})


def test_the_token_fed_recipes_have_the_paper_methods_budget_and_a_prompt_modules_size():
    from lpm import zoo
    from lpm.models import LayerAdaptivePromptModule
    from lpm.paths import PROJECT_ROOT
    from lpm.train.runner import load_config

    configs = PROJECT_ROOT / "configs"
    same = ("model", "init", "rates", "base_rate", "steps", "lr", "lr_drops", "seed", "data", "clip", "bf16")
    for hidden_name, prompts_name in (("reduced-hidden", "reduced-prompts"), ("tiny-smoke-hidden", "tiny-smoke-prompts-only")):
        a = load_config(configs / f"{hidden_name}.yaml")
        b = load_config(configs / f"{prompts_name}.yaml")
        assert {k: getattr(a, k) for k in same} == {k: getattr(b, k) for k in same}, hidden_name
        assert a.prompt_stride == 1 and a.prompt["enc_source"] == a.prompt["dec_source"] == "hidden" and a.prompt["additive"]
        named = zoo.CONFIGS[a.model]
        base2 = TICCodec(**{**named["codec"], "prompt_stride": 2})
        plain = LayerAdaptivePromptModule(base2, PromptConfig.from_dict(named["prompt"])).num_parameters()
        cfg = PromptConfig.from_dict({**named["prompt"], **a.prompt})
        n = LayerAdaptivePromptModule(base2.with_prompt_stride(1), cfg).num_parameters()
        wider = PromptConfig.from_dict({**cfg.to_dict(), "enc_channels": cfg.enc_channels + 1,
                                        "dec_channels": cfg.dec_channels + 1})
        assert n <= plain < LayerAdaptivePromptModule(base2.with_prompt_stride(1), wider).num_parameters(), hidden_name



def test_additive_only_heads_add_to_the_tokens_and_put_no_prompts_into_attention():
    blk = _block(shift=4)
    torch.manual_seed(2)
    head = HiddenPromptHead(DIM, 5, stride=2, init_scale=1.0, additive=True, kv=False)
    assert head.adds_only and head.out.out_channels == DIM and head.out.weight.abs().max() == 0  # starts at zero
    with torch.no_grad():
        head.out.weight.normal_(0, 0.3)
    x = torch.randn(1, 13, 9, DIM)
    with torch.no_grad():
        m = head(blk.norm1(x).permute(0, 3, 1, 2))  # (1, C, 7, 5): each pixel to the 2x2 tokens it covers
        add = m.repeat_interleave(2, 2).repeat_interleave(2, 3)[..., :13, :9].permute(0, 2, 3, 1)
        torch.testing.assert_close(blk(x, head), blk(x + add), atol=1e-5, rtol=0)  # exactly "add, then the block"
        torch.testing.assert_close(blk(x, head, math.log(0.25)), blk(x + 0.25 * add), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="must be additive"):
        HiddenPromptHead(DIM, 5, additive=False, kv=False)


def test_additive_only_modules_code_interpolate_and_need_hidden_sources():
    torch.manual_seed(0)
    from conftest import TINY_BASE

    base = TICCodec(**{**TINY_BASE, "prompt_stride": 1})
    cfg = PromptConfig(8, 0, 8, 0, head_init_scale=1.0, additive=True, enc_source="hidden", dec_source="hidden",
                       kv_prompts=False)
    model = PromptedCodec(base, list(TINY_RATES), TINY_BASE_RATE, cfg)
    with torch.no_grad():
        for p in model.prompts.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.eval().update(force=True)
    x = torch.rand(1, 3, 40, 56, generator=torch.Generator().manual_seed(1))
    mid = math.sqrt(0.0035 * RATE)
    for rate in (RATE, mid, math.sqrt(RATE * TINY_BASE_RATE)):
        c = model.compress(x, rate)
        dec = model.decompress(c["strings"], c["shape"], rate, size=(40, 56), table_checks=c["table_checks"])["x_hat"]
        with torch.no_grad():
            assert (dec - model(x, rate)["x_hat"].clamp(0, 1)).abs().max() <= 1e-5
    assert model.prompt_source(mid).encoder(None)["g_a.0"][0].adds_only
    for bad in (dict(additive=False, enc_source="hidden", dec_source="hidden"), dict(additive=True, enc_source="image",
                dec_source="hidden"), dict(additive=True, enc_source="hidden", dec_source="latent"), dict(kv_prompts="no")):
        with pytest.raises(ValueError, match="kv_prompts"):
            PromptConfig(**{"kv_prompts": False, **bad})
    with pytest.raises(ValueError, match="RateConditionedCodec"):
        RateConditionedCodec(make_tiny_base(), list(TINY_RATES), cfg)
