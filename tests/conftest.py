"""Shared fixtures: test-sized codecs (fast on a couple of CPU cores)."""

from __future__ import annotations

import pytest
import torch

from lpm.models import PromptConfig, PromptedCodec, TICCodec

TINY_BASE = dict(
    N=16,
    M=24,
    enc_depths=(1, 1, 2),
    dec_depths=(2, 1, 1),
    enc_heads=(2, 2, 2),
    dec_heads=(2, 2, 2),
    hyper_depth=2,
    hyper_heads=2,
)
TINY_RATES = (0.0035, 0.013, 0.0483)
TINY_BASE_RATE = 0.0483


def write_fake_bsds500(root, counts: dict[str, int], seed: int = 0) -> None:
    """A fake 'bsds500' layout under ``root``: ``counts`` smooth, slightly noisy 60×45 PNGs per split
    (written with PIL, so it also works where imagecodecs is not importable)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in counts.items():
        d = root / "bsds500" / split
        d.mkdir(parents=True)
        for i in range(n):
            low = rng.random((6, 8, 3))
            img = np.kron(low, np.ones((8, 8, 1)))[:45, :60]
            img = np.clip(img * 255 + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(d / f"{split}{i:02d}.png")


def tiny_base_checkpoint(root, lmbda: float = 0.013, steps: int = 2):
    """Fake BSDS500 images under ``root`` and a tiny base trained on them for ``steps`` steps by ``lpm train``'s
    engine; the path of its ``model.safetensors``."""
    from lpm.train.runner import Runner, RunConfig

    write_fake_bsds500(root, {"train": 6, "val": 2, "test": 2})
    out = root / "base"
    Runner(RunConfig(name="b", kind="base", model="tiny", lmbda=lmbda, steps=steps, out_dir=str(out),
                     data={"dir": str(root), "crop": 32, "batch": 2, "on_device": False}), progress=False).run()
    return out / "model.safetensors"


def make_tiny_base(seed: int = 0) -> TICCodec:
    """A tiny base codec. The entropy bottleneck's medians are moved off zero (a fresh one has all-zero
    medians, so ``ẑ`` would be integer-valued, which a trained model's is not)."""
    torch.manual_seed(seed)
    base = TICCodec(**TINY_BASE)
    with torch.no_grad():
        base.entropy_bottleneck.quantiles.add_(torch.rand(base.config.N, 1, 1) - 0.5)
    return base


def make_tiny_codec(seed: int = 0, strong_prompts: bool = True, ready: bool = True,
                    additive: bool = False, enc_source: str = "image", dec_source: str = "latent") -> PromptedCodec:
    """A tiny :class:`PromptedCodec`. ``strong_prompts`` re-draws the prompt heads' last layers (which start
    at 0.1x scale with zero bias) at full scale, so prompts change the output visibly, as trained ones do.
    ``ready`` puts it in eval mode with entropy-coder tables built. ``additive``: additive prompt modules;
    ``enc_source``/``dec_source``: where each side's prompts come from (:class:`PromptConfig`)."""
    base = make_tiny_base(seed)
    torch.manual_seed(seed + 1)
    model = PromptedCodec(
        base,
        rates=list(TINY_RATES),
        base_rate=TINY_BASE_RATE,
        prompt_config=PromptConfig(enc_channels=8, dec_channels=8, additive=additive, enc_source=enc_source,
                                   dec_source=dec_source),
    )
    if strong_prompts:
        g = torch.Generator().manual_seed(seed + 2)
        with torch.no_grad():
            for name, p in model.prompts.named_parameters():
                if ".heads." in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    if ready:
        model.eval()
        model.update(force=True)
    return model


@pytest.fixture(scope="session")
def tiny_codec() -> PromptedCodec:
    """Shared, read-only tiny prompted codec (eval mode, ``update(force=True)`` done). Do not train it."""
    return make_tiny_codec()


@pytest.fixture
def fresh_tiny_codec() -> PromptedCodec:
    """A tiny prompted codec of one's own (may be trained or modified)."""
    return make_tiny_codec()


@pytest.fixture(scope="module")
def torch_single_thread():
    """Run a module's tests with one intra-op thread, restored afterwards. The models here are tiny, and
    with two threads on a two-core machine that is also busy with something else, torch's thread pool
    waits on the busy core and the same work becomes tens of times slower."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A tiny untrained checkpoint file (seed 0) for the command-line tests."""
    from lpm.train.checkpoint import save_codec

    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_codec(path, make_tiny_codec(seed=0), meta={"budget": "untrained test model"})
    return path
