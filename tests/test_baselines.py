"""Tests for lpm.models.baselines: λ-conditioned prompts (Kao et al.), gain units (Cui et al.), K separate
models — all on the tiny TIC backbone, with real rANS bitstreams."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import TINY_RATES, make_tiny_base
from lpm.models import (
    GainUnitCodec,
    PromptConfig,
    RateConditionedCodec,
    SeparateModels,
    TICCodec,
    separate_models,
)

pytestmark = pytest.mark.usefixtures("torch_single_thread")

LO, HI = TINY_RATES[0], TINY_RATES[-1]
BETWEEN = (0.006, 0.03)  # one between each pair of trained rates
KINDS = ("conditioned", "gain", "separate")


def image(h: int, w: int, b: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    yy = torch.linspace(0, 1, h)[:, None]
    xx = torch.linspace(0, 1, w)[None, :]
    base = torch.stack([0.5 + 0.4 * torch.sin(6 * xx + 3 * yy + k) for k in range(3)])
    return (base[None] + 0.08 * torch.randn(b, 3, h, w, generator=g)).clamp(0, 1)


def make(kind: str, seed: int = 0, ready: bool = True):
    base = make_tiny_base(seed)
    torch.manual_seed(seed + 1)
    if kind == "conditioned":
        model = RateConditionedCodec(base, TINY_RATES, PromptConfig(enc_channels=8, dec_channels=8))
        g = torch.Generator().manual_seed(seed + 2)
        with torch.no_grad():  # full-scale heads, so λ visibly changes the output (as after training)
            for name, p in model.prompts.named_parameters():
                if ".heads." in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    elif kind == "gain":
        model = GainUnitCodec(base, TINY_RATES)
        g = torch.Generator().manual_seed(seed + 2)
        with torch.no_grad():  # asymmetric, channel-varying gains (as after training)
            model.log_gain.add_(0.3 * torch.randn(model.log_gain.shape, generator=g))
            model.log_inv_gain.add_(0.3 * torch.randn(model.log_inv_gain.shape, generator=g))
    else:
        model = SeparateModels(separate_models(base, TINY_RATES))
        with torch.no_grad():  # make the K copies differ, as separately trained ones would
            for i, m in enumerate(model.models.values()):
                m.g_s.layers[-1].weight.mul_(1 + 0.5 * i)
    if ready:
        model.eval()
        model.update(force=True)
    return model


@pytest.fixture(scope="module")
def models():
    return {k: make(k) for k in KINDS}


def rates_of(kind: str):
    return TINY_RATES if kind == "separate" else TINY_RATES + BETWEEN


def nbytes(strings) -> int:
    return sum(len(s) for part in strings for s in part)


# --------------------------------------------------------------------------- common API
@pytest.mark.parametrize("kind", KINDS)
def test_common_api(models, kind):
    m = models[kind]
    assert m.rates == sorted(TINY_RATES)
    assert m.base_rate == HI
    assert m.rate_range == (LO, HI)
    counts = m.parameter_counts()
    total = sum(p.numel() for p in m.parameters())
    assert counts["total"] == total == m.num_parameters()
    assert sum(v for k, v in counts.items() if k != "total") == total


# --------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("h,w", [(37, 70), (1, 1), (64, 64)])
def test_round_trip_matches_forward(models, kind, h, w):
    m = models[kind]
    x = image(h, w)
    for rate in rates_of(kind):
        with torch.no_grad():
            ref = m(x, rate)["x_hat"].clamp(0, 1)
        enc = m.compress(x, rate)
        assert enc["shape"] == TICCodec.latent_shape(h, w)
        assert len(enc["strings"]) == 2 and all(len(s) == 1 for s in enc["strings"])
        out = m.decompress(enc["strings"], enc["shape"], rate, size=(h, w))["x_hat"]
        assert out.shape == ref.shape == (1, 3, h, w)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=0, msg=lambda s: f"{kind} rate {rate}: {s}")


@pytest.mark.parametrize("kind", KINDS)
def test_rates_differ(models, kind):
    """The rate argument does something: each rate gives its own reconstruction."""
    m = models[kind]
    x = image(64, 64, seed=1)
    with torch.no_grad():
        outs = {r: m(x, r)["x_hat"] for r in rates_of(kind)}
    rs = list(outs)
    for i, a in enumerate(rs):
        for b in rs[i + 1 :]:
            assert (outs[a] - outs[b]).abs().max() > 1e-4, (kind, a, b)


@pytest.mark.parametrize("kind", KINDS)
def test_deterministic_and_state_dict_reload(models, kind):
    m = models[kind]
    x = image(70, 45, seed=3)
    rate = 0.013
    a, b = m.compress(x, rate), m.compress(x, rate)
    assert a["strings"] == b["strings"] and a["shape"] == b["shape"]
    d1 = m.decompress(a["strings"], a["shape"], rate)["x_hat"]
    d2 = m.decompress(a["strings"], a["shape"], rate)["x_hat"]
    assert torch.equal(d1, d2)
    # a differently initialised model loaded from the state dict (entropy tables resized) codes the same
    other = make(kind, seed=5, ready=False)
    other.load_state_dict(m.state_dict())
    other.eval()
    assert other.compress(x, rate)["strings"] == a["strings"]


@pytest.mark.parametrize("kind", ("conditioned", "gain"))
def test_rejects_rates_outside_range(models, kind):
    m = models[kind]
    x = image(8, 8)
    for bad in (LO * 0.9, HI * 1.1, float("nan")):
        with pytest.raises(ValueError, match="outside"):
            m(x, bad)
    with torch.no_grad():  # just outside by float noise counts as the end
        torch.testing.assert_close(m(x, HI * (1 + 1e-12))["x_hat"], m(x, HI)["x_hat"], atol=0, rtol=0)


@pytest.mark.parametrize("kind", ("conditioned", "gain"))
def test_per_image_rates_match_single_calls(models, kind):
    """A 1-D λ tensor codes each image of a batch at its own rate, exactly as coding it alone."""
    m = models[kind]
    x = torch.cat([image(40, 52, seed=s) for s in (0, 1, 2)])
    rates = [LO, 0.02, HI]
    lam = torch.tensor(rates)  # float32: within float32 precision of a trained rate counts as that rate
    with torch.no_grad():
        batched = m(x, lam)
        enc = m.compress(x, lam)
        dec = m.decompress(enc["strings"], enc["shape"], lam, size=(40, 52))["x_hat"]
    for i, r in enumerate(rates):
        with torch.no_grad():
            single = m(x[i : i + 1], r)
        torch.testing.assert_close(batched["x_hat"][i : i + 1], single["x_hat"], atol=1e-5, rtol=0)
        for k in ("y", "z"):
            lik, ref = batched["likelihoods"][k][i : i + 1], single["likelihoods"][k]
            torch.testing.assert_close(lik, ref, atol=1e-5, rtol=1e-5)
        e1 = m.compress(x[i : i + 1], r)
        assert [enc["strings"][0][i]] == e1["strings"][0] and [enc["strings"][1][i]] == e1["strings"][1]
        torch.testing.assert_close(dec[i : i + 1], single["x_hat"].clamp(0, 1), atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- RateConditionedCodec
def test_log_lambda_map_normalisation(models):
    m = models["conditioned"]
    t = m.normalized_log_rate(torch.tensor([LO, HI, math.sqrt(LO * HI), 0.013]))
    assert t[0].item() == 0.0 and t[1].item() == 1.0
    assert t[2].item() == pytest.approx(0.5, abs=1e-6)
    assert t[3].item() == pytest.approx(math.log(0.013 / LO) / math.log(HI / LO), abs=1e-6)
    assert m.normalized_log_rate(0.013, batch=4).shape == (4,)
    # custom λ range: the normalisation follows it, and rates must lie inside it
    wide = RateConditionedCodec(make_tiny_base(), TINY_RATES, PromptConfig(enc_channels=4, dec_channels=4),
                                lambda_range=(0.001, 0.1))
    assert wide.rate_range == (0.001, 0.1)
    assert wide.normalized_log_rate(0.001).item() == 0.0 and wide.normalized_log_rate(0.1).item() == 1.0
    assert wide.normalized_log_rate(0.01).item() == pytest.approx(0.5, abs=1e-6)
    with pytest.raises(ValueError):
        RateConditionedCodec(make_tiny_base(), TINY_RATES, lambda_range=(0.01, 0.1))


def test_log_lambda_map_does_not_depend_on_the_batch_around_it(models):
    """The normalised log-λ feeds the hyper-decoder's prompts: the encoder (a batch) and the decoder (one
    image) must get the same float32 number for a λ, the correctly rounded value of the formula."""
    m = models["conditioned"]
    g = torch.Generator().manual_seed(3)
    rates = torch.exp(math.log(LO) + torch.rand(37, generator=g, dtype=torch.float64) * math.log(HI / LO)).clamp(LO, HI)
    batch = m.normalized_log_rate(rates)
    for i, r in enumerate(rates.tolist()):
        one = m.normalized_log_rate(r)
        assert one.dtype == torch.float32 and one.item() == batch[i].item()
        assert one.item() == torch.tensor((math.log(r) - math.log(LO)) / (math.log(HI) - math.log(LO))).float().item()
    # the map is one extra constant input channel of every prompt net
    N, M = m.base.config.N, m.base.config.M
    assert m.prompts.encoder.stem[0].in_channels == 3 + 1
    assert m.prompts.hyper_decoder.stem[0].in_channels == N + 1
    assert m.prompts.decoder.stem[0].in_channels == M + 1
    src = m.prompt_source(torch.tensor([LO, HI]))
    f = torch.zeros(2, 5, 3, 4)
    aug = src._with_t(f)
    assert aug.shape == (2, 6, 3, 4)
    assert torch.equal(aug[0, 5], torch.zeros(3, 4)) and torch.equal(aug[1, 5], torch.ones(3, 4))


def test_sample_rates_log_uniform(models):
    m = models["conditioned"]
    lam = m.sample_rates(4000, generator=torch.Generator().manual_seed(0))
    assert lam.shape == (4000,)
    assert float(lam.min()) >= LO and float(lam.max()) <= HI
    t = m.normalized_log_rate(lam)
    assert abs(float(t.mean()) - 0.5) < 0.03 and abs(float((t < 0.25).float().mean()) - 0.25) < 0.03
    again = m.sample_rates(4000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(lam, again)


# --------------------------------------------------------------------------- GainUnitCodec
def test_gain_interpolation(models):
    m = models["gain"]
    for i, r in enumerate(TINY_RATES):  # trained rates: the stored gains, exactly
        g, gi = m.gains(r)
        assert torch.equal(g[0], m.log_gain[i].exp()) and torch.equal(gi[0], m.log_inv_gain[i].exp())
    for i in range(len(TINY_RATES) - 1):  # log-λ midpoint: the geometric mean of the neighbours
        a, b = TINY_RATES[i], TINY_RATES[i + 1]
        g, gi = m.gains(math.sqrt(a * b))
        ga, gb = m.log_gain[i].exp(), m.log_gain[i + 1].exp()
        torch.testing.assert_close(g[0], (ga * gb).sqrt(), rtol=1e-6, atol=0)
        gia, gib = m.log_inv_gain[i].exp(), m.log_inv_gain[i + 1].exp()
        torch.testing.assert_close(gi[0], (gia * gib).sqrt(), rtol=1e-6, atol=0)
    # general position: g = g_a^(1-l) g_b^l with l the log-λ position
    a, b, r = TINY_RATES[0], TINY_RATES[1], 0.006
    l = math.log(r / a) / math.log(b / a)
    _, _, ll = m.interpolation(r)
    assert ll.item() == pytest.approx(l, abs=1e-12)
    g, _ = m.gains(r)
    torch.testing.assert_close(g[0], m.log_gain[0].exp() ** (1 - l) * m.log_gain[1].exp() ** l, rtol=1e-5, atol=0)
    assert bool((g > 0).all())


def test_gain_init():
    m = GainUnitCodec(make_tiny_base(), TINY_RATES)
    g, gi = m.gains(torch.tensor(TINY_RATES))
    torch.testing.assert_close(g[:, 0], torch.tensor([math.sqrt(r / HI) for r in TINY_RATES]))
    torch.testing.assert_close(gi, 1 / g)
    assert torch.equal(g[-1], torch.ones_like(g[-1]))
    with pytest.raises(ValueError):
        GainUnitCodec(make_tiny_base(), TINY_RATES, gain_init="bogus")


def test_unit_gains_equal_the_base():
    base = make_tiny_base()
    gu = GainUnitCodec(base, TINY_RATES, gain_init="ones")
    gu.eval()
    gu.update(force=True)
    x = image(37, 70, seed=4)
    for rate in (LO, 0.02):
        with torch.no_grad():
            a, b = gu(x, rate), base(x)
        assert torch.equal(a["x_hat"], b["x_hat"])
        assert torch.equal(a["likelihoods"]["y"], b["likelihoods"]["y"])
        assert torch.equal(a["likelihoods"]["z"], b["likelihoods"]["z"])
        assert gu.compress(x, rate)["strings"] == base.compress(x)["strings"]


def test_smaller_gains_fewer_bytes():
    gu = GainUnitCodec(make_tiny_base(), TINY_RATES, gain_init="ones")
    gu.eval()
    gu.update(force=True)
    x = image(64, 64)
    sizes = []
    for v in (0.3, 1.0, 3.0):
        with torch.no_grad():
            gu.log_gain[0].fill_(math.log(v))
        sizes.append(nbytes(gu.compress(x, LO)["strings"]))
    assert sizes[0] < sizes[1] < sizes[2], sizes
    # and with the default λ^½ initialisation, bytes grow with the rate
    gu = make("gain")
    sizes = [nbytes(gu.compress(x, r)["strings"]) for r in TINY_RATES]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1], sizes


# --------------------------------------------------------------------------- end-to-end training
@pytest.mark.parametrize("kind", ("conditioned", "gain"))
def test_gradients_reach_base(kind):
    base = make_tiny_base()
    base.requires_grad_(False)  # e.g. the frozen base of a PromptedCodec: the baseline trains it again
    if kind == "gain":
        m = GainUnitCodec(base, TINY_RATES)
    else:
        m = RateConditionedCodec(base, TINY_RATES, PromptConfig(enc_channels=8, dec_channels=8))
    assert all(p.requires_grad for p in m.parameters())
    m.train()
    x = image(32, 40, b=2)
    rate = torch.tensor([0.006, 0.03])
    out = m(x, rate)
    n = x.shape[0] * x.shape[-2] * x.shape[-1]
    bpp = sum(-l.log2().sum() for l in out["likelihoods"].values()) / n
    loss = bpp + 0.013 * 255**2 * (out["x_hat"] - x).pow(2).mean()
    loss.backward()
    for name in ("g_a", "h_a", "h_s", "g_s", "entropy_bottleneck"):
        grads = [p.grad for n_, p in m.base.named_parameters() if n_.startswith(name) and not n_.endswith("quantiles")]
        assert grads and all(g is not None for g in grads), name
        assert sum(float(g.abs().sum()) for g in grads) > 0, name
    if kind == "gain":
        # rate 0.006 lies between rows 0 and 1, 0.03 between rows 1 and 2: all rows get gradient
        for p in (m.log_gain, m.log_inv_gain):
            assert bool((p.grad.abs().sum(1) > 0).all())
    else:
        assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in m.prompts.parameters())


# --------------------------------------------------------------------------- SeparateModels
def test_separate_models():
    base = make_tiny_base()
    base.requires_grad_(False)
    ms = separate_models(base, reversed(TINY_RATES))
    assert list(ms) == list(TINY_RATES)
    assert len({id(m) for m in ms.values()} | {id(base)}) == len(TINY_RATES) + 1
    for m in ms.values():
        assert all(p.requires_grad for p in m.parameters())
        assert all(torch.equal(p, q) for p, q in zip(m.parameters(), base.parameters()))
    with torch.no_grad():  # independent copies
        ms[LO].g_a.layers[0].weight.add_(1.0)
    assert not torch.equal(ms[LO].g_a.layers[0].weight, ms[HI].g_a.layers[0].weight)
    sm = SeparateModels(ms)
    assert sm.model(LO) is ms[LO] and sm.model(HI) is ms[HI]
    counts = sm.parameter_counts()
    assert counts["total"] == sum(p.numel() for m in ms.values() for p in m.parameters())
    assert counts["total"] == len(TINY_RATES) * base.num_parameters()
    x = image(8, 8)
    for bad in (0.006, 0.02, LO * 0.5):
        with pytest.raises(ValueError, match="not one of the trained rates"):
            sm(x, bad)
        with pytest.raises(ValueError, match="continuous"):
            sm.compress(x, bad)
        with pytest.raises(ValueError):
            sm.decompress([[b""], [b""]], (1, 1), bad)
    with pytest.raises(ValueError):
        SeparateModels({})
