"""Loading checkpoints trusts nothing in the file (issue 10): configs outside the documented bounds, configs
that do not fit the tensors actually stored, malformed metadata and broken files are each one
:class:`CheckpointError` line naming the path, refused before any model is built (fast, no memory)."""

from __future__ import annotations

import json
import os
import resource
import struct
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY_RATES, make_tiny_base, make_tiny_codec
from PIL import Image
from safetensors.torch import load_file, save_file

from lpm.cli import main
from lpm.models import GainUnitCodec, PromptConfig, PromptedCodec, RateConditionedCodec, TICCodec
from lpm.train.checkpoint import CheckpointError, CheckpointNotFoundError, load_codec, read_metadata, save_codec

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    """One tiny checkpoint of every kind (and a half-precision one)."""
    d = tmp_path_factory.mktemp("ckpts")
    out = {}
    models = {
        "prompted": make_tiny_codec(ready=False),
        "tic": make_tiny_base(),
        "rate_conditioned": RateConditionedCodec(make_tiny_base(), TINY_RATES,
                                                 PromptConfig(enc_channels=8, dec_channels=8)),
        "gain_units": GainUnitCodec(make_tiny_base(), TINY_RATES),
    }
    for kind, model in models.items():
        out[kind] = d / f"{kind}.safetensors"
        save_codec(out[kind], model, meta={"base_rate": 0.0483, "budget": "test"})
    out["half"] = d / "half.safetensors"
    save_codec(out["half"], models["prompted"], meta={}, half=True)
    return out


def _resave(src: Path, dst: Path, tensors: dict | None = None, **changes: str) -> Path:
    md = read_metadata(src)
    save_file(load_file(str(src)) if tensors is None else tensors, str(dst), metadata={**md, **changes})
    return dst


def _raw(path: Path, header: dict, data: bytes) -> Path:
    h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + data)
    return path


def _refused(path: Path, match: str = "") -> str:
    with pytest.raises(CheckpointError) as info:
        load_codec(path)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg, msg
    assert match in msg, msg
    return msg


def _cfg(ckpt: Path) -> dict:
    return json.loads(read_metadata(ckpt)["codec_config"])


# ----------------------------------------------------------------------------------------------- legit files
@pytest.mark.parametrize("kind", ["tic", "prompted", "rate_conditioned", "gain_units", "half"])
def test_every_kind_still_loads_and_codes(ckpts, kind):
    model, info = load_codec(ckpts[kind])
    assert info["kind"] == ("prompted" if kind == "half" else kind)
    x = torch.rand(1, 3, 40, 48)
    if isinstance(model, TICCodec):
        c = model.compress(x)
        y = model.decompress(c["strings"], c["shape"], size=(40, 48))["x_hat"]
    else:
        c = model.compress(x, model.rates[0])
        y = model.decompress(c["strings"], c["shape"], model.rates[0], size=(40, 48))["x_hat"]
    assert y.shape == x.shape


# ----------------------------------------------------------------------------------------------- giant configs
def _giant_configs(cfg: dict) -> dict[str, dict]:
    deep = dict(enc_depths=[64] * 3, dec_depths=[64] * 3, hyper_depth=64)
    return {
        "N=M=3000": {**cfg, "N": 3000, "M": 3000},
        "depths [100000,1,1]": {**cfg, "enc_depths": [100000, 1, 1]},
        "N=M=1024, 64 blocks per stage (17 GB)": {**cfg, **deep, "N": 1024, "M": 1024, "enc_heads": [8] * 3,
                                                  "dec_heads": [8] * 3, "hyper_heads": 8},
        "N=M=1024, no blocks (wide convolutions)": {**cfg, "N": 1024, "M": 1024, "enc_depths": [0] * 3,
                                                    "dec_depths": [0] * 3, "hyper_depth": 0},
        "thin, 512 blocks of window 32 (4 GB of index tables)": {
            **cfg, **deep, "N": 2, "M": 2, "enc_heads": [1] * 3, "dec_heads": [1] * 3, "hyper_heads": 1,
            "window": 32, "hyper_window": 32},
    }


def test_giant_configs_are_refused_fast_and_without_allocating(ckpts, tmp_path):
    """A 1.3 MB file whose metadata asks for a giant model: refused in well under a second each, with the
    address space of this process capped at 1 GiB above what it uses now (building any of these for real
    would need gigabytes)."""
    src = ckpts["prompted"]
    files = {name: _resave(src, tmp_path / f"g{i}.safetensors", codec_config=json.dumps(c))
             for i, (name, c) in enumerate(_giant_configs(_cfg(src)).items())}
    rates = [0.001 * (i + 1) for i in range(64)]
    files["64 rates of 1024-wide prompt modules"] = _resave(
        src, tmp_path / "rates.safetensors", rates=json.dumps(rates), base_rate=repr(rates[-1]),
        prompt_config=json.dumps({"enc_channels": 1024, "dec_channels": 1024, "enc_head_hidden": 1024,
                                  "dec_head_hidden": 1024}))
    load_codec(src)  # warm up (imports, caches of the legit config)
    vm = int(next(line for line in Path("/proc/self/status").read_text().splitlines()
                  if line.startswith("VmSize:")).split()[1]) * 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = vm + (1 << 30)
    if hard != resource.RLIM_INFINITY and hard < cap:
        cap = hard
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    results = {}
    try:
        for name, path in files.items():
            t0 = time.perf_counter()
            try:
                load_codec(path)
                results[name] = ("loaded", time.perf_counter() - t0)
            except CheckpointError as e:
                results[name] = (str(e), time.perf_counter() - t0)
            except (MemoryError, RuntimeError) as e:  # what building it for real runs into
                results[name] = (f"not refused: {type(e).__name__}", time.perf_counter() - t0)
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    for name, (msg, seconds) in results.items():
        assert str(files[name]) in msg and "\n" not in msg, (name, msg)
        assert seconds < 1.0, (name, seconds)


_FIVE_RATES = (0.0018, 0.0035, 0.0067, 0.013, 0.0483)


def _five_rate_models() -> dict:
    from lpm.models import LoRACodec

    return {
        "prompted": PromptedCodec(make_tiny_base(), _FIVE_RATES, 0.0483, PromptConfig(enc_channels=8, dec_channels=8)),
        "rate_conditioned": RateConditionedCodec(make_tiny_base(), _FIVE_RATES,
                                                 PromptConfig(enc_channels=8, dec_channels=8)),
        "gain_units": GainUnitCodec(make_tiny_base(), _FIVE_RATES),
        "lora": LoRACodec(make_tiny_base(), _FIVE_RATES, 0.0483),
    }


@pytest.mark.parametrize("kind", ["prompted", "rate_conditioned", "gain_units", "lora"])
def test_tensor_count_from_short_ladders_is_the_full_builds(tmp_path, kind):
    from lpm import checkpoints

    path = tmp_path / f"{kind}.safetensors"
    save_codec(path, _five_rate_models()[kind], meta={"base_rate": 0.0483, "budget": "test"})
    md = read_metadata(path)
    cfg, fields, _, _ = checkpoints._parse(path, md)
    cfg_key, fields_key = checkpoints._key(cfg.to_dict()), checkpoints._key(fields)
    full = len(checkpoints._layout(kind, cfg_key, fields_key).tensors)
    assert checkpoints._extrapolated_tensor_count(kind, cfg_key, fields) == full == len(load_file(str(path)))


def test_a_long_ladder_claimed_by_a_small_file_is_refused_before_it_is_built(tmp_path):
    """A crafted low-rank-adapter file claiming a deep config and 64 rates used to be built on ``meta`` in
    full (265k tensors: 131 s) before its missing tensors were noticed; the count now comes from two short
    ladders."""
    src = tmp_path / "lora.safetensors"
    save_codec(src, _five_rate_models()["lora"], meta={"base_rate": 0.0483, "budget": "test"})
    rates = [0.0005 * (i + 1) for i in range(63)] + [0.0483]
    msg = _refused(_resave(src, tmp_path / "long.safetensors", rates=json.dumps(rates)), "the file holds")
    assert "lora" in msg and "64 rates" in msg


@pytest.mark.parametrize("change, match", [
    ({"N": -1}, "N must be an integer in 1..1024"),
    ({"N": "16"}, "N must be an integer"),
    ({"N": 16.5}, "N must be an integer"),
    ({"N": True}, "N must be an integer"),
    ({"window": float("nan")}, "window must be an integer"),
    ({"enc_depths": [1, 1]}, "enc_depths must be a list of 3"),
    ({"enc_depths": "112"}, "enc_depths must be a list of 3"),
    ({"enc_heads": [2, 2, 3]}, "do not divide N"),
    ({"enc_depths": [1, 1, -2]}, "0..64"),
    ({"kernel": 4}, "kernel must be odd"),
    ({"mlp_ratio": float("inf")}, "mlp_ratio must be a finite number"),
    ({"mlp_ratio": 1000}, "mlp_ratio must be in"),
    ({"drop_path": 1.5}, "drop_path"),
    ({"window": 6, "prompt_stride": 2}, "multiple of prompt_stride"),
    ({"prompt_stride": 4}, "prompt_stride"),
    ({"bogus": 1}, "unknown codec config keys"),
])
def test_codec_configs_outside_the_bounds_are_refused(ckpts, tmp_path, change, match):
    cfg = json.dumps({**_cfg(ckpts["prompted"]), **change})
    path = _resave(ckpts["prompted"], tmp_path / "c.safetensors", codec_config=cfg)
    _refused(path, match)


# ----------------------------------------------------------------------------------------------- metadata
NESTED = "[" * 30000 + "]" * 30000


@pytest.mark.parametrize("kind, change, match", [
    ("prompted", {"codec_config": "[1, 2]"}, "codec_config must be a JSON object"),
    ("prompted", {"codec_config": "{"}, "codec_config is not JSON"),
    ("prompted", {"codec_config": NESTED}, "codec_config is not JSON"),
    ("prompted", {"codec_config": "{" + " " * 70000 + "}"}, "characters"),
    ("prompted", {"meta": "[1, 2]"}, "meta must be a JSON object"),
    ("prompted", {"meta": "[" * 200000 + "]" * 200000}, "meta is not JSON"),
    ("prompted", {"meta": json.dumps({"budget": "x" * 20000})}, "meta.budget must be a text of at most 16384 "
                                                                  "characters, got 20000 characters"),
    ("prompted", {"meta": '{"budget": 42}'}, "characters, got a JSON int"),
    ("prompted", {"meta": json.dumps({"notes": "x" * (9 << 20)})}, "meta is 9437197 characters; at most 8388608"),
    ("prompted", {"rates": '{"a": 1}'}, "rates must be a JSON list"),
    ("prompted", {"rates": "[]"}, "1..64"),
    ("prompted", {"rates": json.dumps([0.001 * (i + 1) for i in range(65)])}, "1..64"),
    ("prompted", {"rates": '["0.0035", "0.013", "0.0483"]'}, "finite positive"),
    ("prompted", {"rates": "[NaN, 0.013, 0.0483]"}, "finite positive"),
    ("prompted", {"rates": "[1e999, 0.013, 0.0483]"}, "finite positive"),
    ("prompted", {"rates": "[-0.01, 0.013, 0.0483]"}, "finite positive"),
    ("prompted", {"rates": "[" + "9" * 5000 + ", 0.0483]"}, "rates is not JSON"),
    ("prompted", {"rates": "[0.013, 0.013, 0.0483]"}, "distinct"),
    ("prompted", {"rates": "[true, 0.013, 0.0483]"}, "finite positive"),
    ("prompted", {"base_rate": "nan"}, "base_rate must be a finite positive"),
    ("prompted", {"base_rate": "zero"}, "base_rate must be a finite positive"),
    ("prompted", {"base_rate": "0.02"}, "not in the rate ladder"),
    ("prompted", {"prompt_config": "[8, 8]"}, "prompt_config must be a JSON object"),
    ("prompted", {"prompt_config": '{"enc_channels": 1000000000}'}, "enc_channels must be an integer in 1..1024"),
    ("prompted", {"prompt_config": '{"latent_gain": "yes"}'}, "latent_gain"),
    ("rate_conditioned", {"lambda_range": "[0.05, 0.001]"}, "lambda_range"),
    ("rate_conditioned", {"lambda_range": "[0.001]"}, "lambda_range"),
    ("rate_conditioned", {"lambda_range": '"wide"'}, "lambda_range must be a JSON list"),
    ("prompted", {"kind": "pickle"}, "unknown checkpoint kind"),
    ("prompted", {"lpm_format": "2"}, "format"),
    ("gain_units", {"rates": "[0.0035, 0.013]"}, "do not fit"),
])
def test_malformed_metadata_is_one_line(ckpts, tmp_path, kind, change, match):
    t0 = time.perf_counter()
    _refused(_resave(ckpts[kind], tmp_path / "m.safetensors", **change), match)
    assert time.perf_counter() - t0 < 2.0


# ----------------------------------------------------------------------------------------------- broken files
def test_broken_files_are_one_line(ckpts, tmp_path):
    src = ckpts["prompted"]
    data = src.read_bytes()
    (tmp_path / "a_directory.safetensors").mkdir()
    _refused(tmp_path / "a_directory.safetensors", "is a directory")
    with pytest.raises(CheckpointNotFoundError) as info:
        load_codec(tmp_path / "missing.safetensors")
    assert isinstance(info.value, FileNotFoundError) and "missing.safetensors" in str(info.value)
    (tmp_path / "empty.safetensors").write_bytes(b"")
    _refused(tmp_path / "empty.safetensors", "empty file")
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    _refused(tmp_path / "cut.safetensors", "not a safetensors checkpoint")
    (tmp_path / "cut_header.safetensors").write_bytes(data[:20])
    _refused(tmp_path / "cut_header.safetensors", "not a safetensors checkpoint")
    torch.save(load_file(str(src)), tmp_path / "pickled.safetensors")
    _refused(tmp_path / "pickled.safetensors", "pickled PyTorch file")
    (tmp_path / "garbage.safetensors").write_bytes(os.urandom(5000))
    _refused(tmp_path / "garbage.safetensors", "not a safetensors checkpoint")
    lying = {"__metadata__": {"lpm_format": "1"},
             "w": {"dtype": "F32", "shape": [10**6], "data_offsets": [0, 4 * 10**6]}}
    _refused(_raw(tmp_path / "lying.safetensors", lying, b"\0" * 16), "not a safetensors checkpoint")
    huge_shape = {"w": {"dtype": "F32", "shape": [2**31, 2**31], "data_offsets": [0, 16]}}
    _refused(_raw(tmp_path / "huge_shape.safetensors", huge_shape, b"\0" * 16), "not a safetensors checkpoint")
    not_strings = {"__metadata__": {"lpm_format": 1, "kind": ["tic"]}, "w": {"dtype": "F32", "shape": [4],
                                                                            "data_offsets": [0, 16]}}
    _refused(_raw(tmp_path / "not_strings.safetensors", not_strings, b"\0" * 16), "not a safetensors checkpoint")
    no_md = {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}
    _refused(_raw(tmp_path / "foreign.safetensors", no_md, b"\0" * 16), "not an lpm checkpoint")
    os.mkfifo(tmp_path / "fifo.safetensors")
    _refused(tmp_path / "fifo.safetensors", "not a regular file")


def test_a_broken_safetensors_file_is_not_called_a_pickle(ckpts, tmp_path):
    """The first 8 bytes of a safetensors file are its header's length: a damaged file whose length starts with
    0x80 0x02 (a header of 640 bytes) or "PK\\x03\\x04" is not a torch.save file; real pickles still are."""
    for length in (0x0280, 0x04034B50):  # little-endian: b"\\x80\\x02..." and b"PK\\x03\\x04..."
        head = json.dumps({"w": {"dtype": "F32", "shape": [100], "data_offsets": [0, 400]}}).encode()
        path = tmp_path / f"damaged-{length}.safetensors"
        with open(path, "wb") as f:
            f.write(struct.pack("<Q", length) + head.ljust(min(length, 1024)) + b"\0" * 16)
            f.truncate(8 + length + 16)  # a sparse file where the length needs more than a KiB
        assert "pickle" not in _refused(path, ": not a safetensors checkpoint (")
    torch.save(load_file(str(ckpts["tic"])), tmp_path / "legacy.safetensors", _use_new_zipfile_serialization=False)
    _refused(tmp_path / "legacy.safetensors", "pickled PyTorch file")


# ----------------------------------------------------------------------------------------------- tensors
def _tensors(src: Path, edit) -> dict:
    t = load_file(str(src))
    edit(t)
    return t


@pytest.mark.parametrize("what, edit, match", [
    ("a tensor missing", lambda t: t.pop("base.g_a.layers.0.weight"), "1 missing tensor(s) (base.g_a.layers.0.weight)"),
    ("a tensor too many", lambda t: t.update(extra=torch.zeros(3)), "1 unexpected tensor(s) (extra)"),
    ("a wrong shape", lambda t: t.update({"base.g_a.layers.0.weight": torch.zeros(16, 3, 3, 3)}), "has shape"),
    ("integers stored as floats", lambda t: t.update({"base.entropy_bottleneck._offset":
                                                      t["base.entropy_bottleneck._offset"].float()}), "stored as F32"),
    ("floats stored as integers", lambda t: t.update({"base.g_a.layers.0.bias": torch.zeros(16, dtype=torch.int32)}),
     "stored as I32"),
    ("inconsistent entropy tables",
     lambda t: t.update({"base.entropy_bottleneck._offset": torch.zeros(3, dtype=torch.int32)}), "inconsistent shapes"),
    ("entropy tables with other rows", lambda t: t.update({
        k: t[k][:4].contiguous() for k in ("base.entropy_bottleneck._offset", "base.entropy_bottleneck._cdf_length",
                                           "base.entropy_bottleneck._quantized_cdf")}), "rows"),
    ("CDF lengths past the table", lambda t: t["base.gaussian_conditional._cdf_length"].fill_(10**6), "CDF lengths"),
    ("a CDF that falls", lambda t: t["base.entropy_bottleneck._quantized_cdf"][0].copy_(
        t["base.entropy_bottleneck._quantized_cdf"][0].flip(0)), "not valid CDFs"),
    ("a NaN weight", lambda t: t["base.g_s.layers.0.weight"].view(-1)[5].fill_(float("nan")), "NaN or infinity"),
    # compressai's encoder dies of SIGFPE on a one-entry CDF (one value of frequency 2**16), and hangs or
    # overflows int32 on offsets or medians of 2**28 and more: no compressai model builds such tables
    ("a one-entry CDF", lambda t: (t["base.gaussian_conditional._cdf_length"][0].fill_(2),
                                   t["base.gaussian_conditional._quantized_cdf"][0, 1].fill_(1 << 16)),
     "CDF lengths outside 3.."),
    ("an offset of 2**31-1", lambda t: t["base.gaussian_conditional._offset"][0].fill_(2**31 - 1), "offsets beyond"),
    ("quantiles of 1e30", lambda t: t["base.entropy_bottleneck.quantiles"].fill_(1e30), "quantiles beyond"),
])
def test_tensors_that_do_not_fit_the_config_are_one_line(ckpts, tmp_path, what, edit, match):
    src = ckpts["prompted"]
    _refused(_resave(src, tmp_path / "t.safetensors", tensors=_tensors(src, edit)), match)


def test_broken_symbolic_links_say_what_is_wrong(tmp_path):
    from lpm import zoo

    (tmp_path / "dangling.safetensors").symlink_to(tmp_path / "gone.safetensors")
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    with pytest.raises(FileNotFoundError, match="is a symbolic link to a missing file .*gone.safetensors"):
        zoo.load(str(tmp_path / "dangling.safetensors"))
    with pytest.raises(FileNotFoundError, match="is a symbolic link in a loop"):
        zoo.load(str(tmp_path / "a"))
    with pytest.raises(FileNotFoundError, match="no checkpoint file or zoo name"):
        zoo.load(str(tmp_path / "nothing-here"))


def test_a_known_good_file_with_another_config_says_do_not_fit(ckpts, tmp_path):
    src = ckpts["prompted"]
    _refused(_resave(src, tmp_path / "n.safetensors", codec_config=json.dumps({**_cfg(src), "N": 32})), "do not fit")
    _refused(_resave(src, tmp_path / "d.safetensors", codec_config=json.dumps({**_cfg(src), "enc_depths": [2, 1, 2]})),
             "do not fit")


# ----------------------------------------------------------------------------------------------- the command
def test_cli_reports_bad_checkpoints_in_one_line(ckpts, tmp_path, capsys):
    image = tmp_path / "in.png"
    Image.new("RGB", (32, 24), (120, 30, 200)).save(image)
    giant = _resave(ckpts["prompted"], tmp_path / "giant.safetensors",
                    codec_config=json.dumps({**_cfg(ckpts["prompted"]), "N": 3000, "M": 3000}))
    pickled = tmp_path / "pickled.safetensors"
    torch.save({"a": torch.zeros(3)}, pickled)
    folder = tmp_path / "folder.safetensors"
    folder.mkdir()
    for bad in (giant, pickled, folder):
        out = tmp_path / "out.lpm"
        t0 = time.perf_counter()
        rc = main(["compress", str(image), str(out), "--model", str(bad)])
        assert time.perf_counter() - t0 < 3.0, bad  # refused before building anything
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith("lpm: error: ") and len(err.strip().splitlines()) == 1, err
        assert str(bad) in err and "Traceback" not in err and not out.exists()


def test_zoo_and_prompted_wrapping_unchanged(ckpts):
    from lpm import zoo

    model, info = zoo.load(str(ckpts["tic"]))
    assert isinstance(model, PromptedCodec) and model.rates == [0.0483] and info["kind"] == "tic"


def test_saved_checkpoint_has_ordinary_file_permissions(tmp_path):
    """safetensors writes its file 0600; a checkpoint is an ordinary shared file (0666 minus the umask)."""
    import os

    from lpm.checkpoints import save_codec
    from lpm.models import TICCodec

    m = TICCodec(N=16, M=24, enc_depths=(1, 1, 1), dec_depths=(1, 1, 1), enc_heads=(2, 2, 2), dec_heads=(2, 2, 2),
                 hyper_depth=1, hyper_heads=2)
    path = tmp_path / "c.safetensors"
    old = os.umask(0o022)
    try:
        save_codec(path, m, meta={"base_rate": 0.01})
    finally:
        os.umask(old)
    assert (path.stat().st_mode & 0o777) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]  # no temporary left


def test_a_checkpoints_budget_text_reaches_the_terminal_without_control_characters(tmp_path, capsys):
    """The budget is read from the file and printed by roundtrip/eval: escape sequences in it used to clear
    the screen, retitle the terminal and forge output lines."""
    from lpm.checkpoints import load_codec as load

    path = tmp_path / "ansi.safetensors"
    evil = "\x1b[2J\x1b[H\x1b]0;pwned\x07fine\nimages: FAKE LINE\u202etxt.exe"
    save_codec(path, make_tiny_codec(), meta={"base_rate": 0.0483, "budget": evil})
    budget = load(path).budget
    assert budget == "\\x1b[2J\\x1b[H\\x1b]0;pwned\\x07fine\\nimages: FAKE LINE\\u202etxt.exe"
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (40, 48), (90, 120, 30)).save(tmp_path / "imgs" / "a.png")
    assert main(["roundtrip", "--model", str(path), "--images", str(tmp_path / "imgs"), "--rates", "0.0483",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out and "\nimages: FAKE" not in out


def test_a_training_init_of_any_kind_gives_its_bare_backbone(ckpts, tmp_path):
    """`init:` of a run may be a checkpoint of any kind: the run starts from its backbone as a bare TICCodec (a
    low-rank-adapter checkpoint's base carries the adapters in place; prompts on it failed with a traceback)."""
    from lpm.models import LoRACodec
    from lpm.train.config import RunConfig
    from lpm.train.stages import initial_base

    lora = LoRACodec(make_tiny_base(seed=3), TINY_RATES, 0.0483)
    with torch.no_grad():
        for p in lora.adapter_parameters():
            p.normal_()
    paths = {**ckpts, "lora": tmp_path / "lora.safetensors"}
    save_codec(paths["lora"], lora, meta={"budget": "test"})
    for kind in ("tic", "prompted", "rate_conditioned", "gain_units", "lora"):
        stored = load_file(str(paths[kind]))
        want = {k.removeprefix("base."): v for k, v in stored.items()
                if (kind == "tic" or k.startswith("base.")) and ".lora_A." not in k and ".lora_B." not in k}
        base, sha = initial_base(RunConfig(name="t", kind="prompts", init=str(paths[kind])), torch.device("cpu"))
        assert type(base) is TICCodec and sha is not None, kind
        got = base.state_dict()
        assert set(got) == set(want) and all(torch.equal(got[k], want[k].to(got[k].dtype)) for k in want), kind
        PromptedCodec(base, TINY_RATES, 0.0483, PromptConfig(enc_channels=8, dec_channels=8))  # prompts fit on it
        LoRACodec(base, TINY_RATES, 0.0483)  # and adapters
