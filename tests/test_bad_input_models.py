"""Bad input to the model side of the package: checkpoints, attention modules, runtime, training,
environment variables and the command lines (issue 13).

As in tests/test_bad_input_text.py: ``ERRORS`` rows must raise the error type given with a message
matching the words given (the problem and what to do); ``HANDLED`` rows must give the right result.
docs/robustness.md counts these tables. Tiny modules only, built once; the command lines run
in-process (``main(argv)``), so no test starts a Python.
"""

from __future__ import annotations

import re
import types

import numpy as np
import pytest
import torch
from torch import nn

from transformer_lesson import runtime, tokenizer, train, translate
from transformer_lesson.attention import causal_mask, padding_mask, scaled_dot_product_attention
from transformer_lesson.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, tokenizer_of
from transformer_lesson.multihead import MultiHeadAttention, attention_heads_loop, merge_heads, split_heads
from transformer_lesson.runtime import DeviceError
from transformer_lesson.training import Trainer, sequence_loss
from transformer_lesson.transformer import Transformer, TransformerConfig

NO_CUDA = not torch.cuda.is_available()
needs_no_cuda = pytest.mark.skipif(not NO_CUDA, reason="this machine has a GPU")


@pytest.fixture(scope="module")
def c(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("models")
    linear = nn.Linear(4, 3)
    adam = torch.optim.Adam(linear.parameters())
    linear(torch.randn(2, 4)).sum().backward()
    adam.step()
    good = save_checkpoint(folder / "good.pt", linear, adam)
    sgd_path = folder / "sgd.pt"
    sgd = torch.optim.SGD(linear.parameters(), lr=0.1, momentum=0.9)
    save_checkpoint(sgd_path, linear, sgd)
    old_sgd = torch.load(sgd_path, weights_only=True)
    old_sgd.pop("optimizer_class")  # as written before the class was recorded
    torch.save(old_sgd, folder / "old_sgd.pt")
    payload = torch.load(good, weights_only=True)
    payload["model"]["weight"][0, 0] += 1e-3  # one changed number
    torch.save(payload, folder / "flipped.pt")
    torch.save({**torch.load(good, weights_only=True), "version": 99}, folder / "newer.pt")
    torch.save(linear.state_dict(), folder / "bare.pt")
    torch.save({"format": "x", "value": np.float64(1.0)}, folder / "numpy.pt")
    (folder / "random.pt").write_bytes(np.random.default_rng(0).bytes(3000))
    (folder / "page.pt").write_bytes(b"<!DOCTYPE html><html><body>404 Not Found</body></html>")
    (folder / "empty.pt").write_bytes(b"")
    (folder / "truncated.pt").write_bytes(good.read_bytes()[:500])
    (folder / "a_file").write_text("not a folder")
    mha = MultiHeadAttention(8, 2).eval()
    config = TransformerConfig(src_vocab_size=50, d_model=8, n_heads=2, n_encoder_layers=1, n_decoder_layers=1,
                               d_ff=8, max_len=10)
    return types.SimpleNamespace(folder=folder, linear=linear, good=good, mha=mha, model=Transformer(config).eval(),
                                 x=torch.randn(3, 3, 8), real=torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0]]).bool())


def _sgd(c):
    return torch.optim.SGD(c.linear.parameters(), lr=0.1, momentum=0.9)


def _adam(c):
    return torch.optim.Adam(c.linear.parameters())


# -- checkpoints ------------------------------------------------------------------------------

CHECKPOINT_ERRORS = [
    ("a folder", lambda c: load_checkpoint(c.folder), CheckpointError, "is a folder, not a checkpoint.*model.pt"),
    ("missing", lambda c: load_checkpoint(c.folder / "none.pt"), CheckpointError, "No checkpoint at.*train a model"),
    ("random bytes", lambda c: load_checkpoint(c.folder / "random.pt"), CheckpointError,
     "is not a checkpoint.*download it again"),
    ("an HTML page", lambda c: load_checkpoint(c.folder / "page.pt"), CheckpointError, "is not a checkpoint.*HTML"),
    ("an empty file", lambda c: load_checkpoint(c.folder / "empty.pt"), CheckpointError, "not a checkpoint.*empty"),
    ("truncated", lambda c: load_checkpoint(c.folder / "truncated.pt"), CheckpointError,
     "truncated or corrupt.*Delete it"),
    ("a bare state_dict", lambda c: load_checkpoint(c.folder / "bare.pt"), CheckpointError,
     "not a transformer-lesson checkpoint.*save_checkpoint"),
    ("an unsafe object", lambda c: load_checkpoint(c.folder / "numpy.pt"), CheckpointError,
     "refuses to read.*save it again"),
    ("one weight changed", lambda c: load_checkpoint(c.folder / "flipped.pt"), CheckpointError,
     "damaged.*checksum.*earlier checkpoint or train again"),
    ("a newer format", lambda c: load_checkpoint(c.folder / "newer.pt"), CheckpointError, "newer version.*update"),
    ("another model's shapes", lambda c: load_checkpoint(c.good, nn.Linear(4, 5)), CheckpointError, "weight"),
    ("Adam's state into SGD", lambda c: load_checkpoint(c.good, c.linear, _sgd(c)), CheckpointError,
     "saved by Adam, but this optimizer is SGD.*start a new optimizer"),
    ("SGD's state into Adam", lambda c: load_checkpoint(c.folder / "sgd.pt", c.linear, _adam(c)), CheckpointError,
     "saved by SGD, but this optimizer is Adam"),
    ("old SGD state into Adam", lambda c: load_checkpoint(c.folder / "old_sgd.pt", c.linear, _adam(c)),
     CheckpointError, "another optimizer \\(with dampening, momentum.*this optimizer is Adam"),
    ("no tokenizer stored", lambda c: tokenizer_of(load_checkpoint(c.good), c.good), CheckpointError,
     "holds no tokenizer.*tokenizer=tokenizer"),
    ("path None", lambda c: load_checkpoint(None), TypeError, "path must be a path"),
    ("save to a folder", lambda c: save_checkpoint(c.folder, c.linear), IsADirectoryError, "is a folder.*model.pt"),
    ("save path None", lambda c: save_checkpoint(None, c.linear), TypeError, "path must be a file path"),
    ("save a state_dict", lambda c: save_checkpoint(c.folder / "s.pt", c.linear.state_dict()), TypeError,
     "saves an nn.Module"),
]

CHECKPOINT_HANDLED = [
    ("Adam into Adam", lambda c: load_checkpoint(c.good, c.linear, _adam(c))["step"] == 0),
    ("a str path", lambda c: load_checkpoint(str(c.good))["format"] is not None),
]


# -- attention modules ------------------------------------------------------------------------

def _qkv(*shape):
    return torch.randn(*shape), torch.randn(*shape), torch.randn(*shape)


ATTENTION_ERRORS = [
    ("queries a list", lambda c: scaled_dot_product_attention([[1.0]], *_qkv(1, 1)[:2]), TypeError,
     "queries must be a torch.Tensor"),
    ("integer inputs", lambda c: scaled_dot_product_attention(*(torch.ones(2, 3, dtype=torch.long),) * 3),
     TypeError, "floating-point"),
    ("dtypes differ", lambda c: scaled_dot_product_attention(torch.randn(2, 3), torch.randn(2, 3).double(),
                                                             torch.randn(2, 3)), TypeError, "share one dtype"),
    ("d_k differs", lambda c: scaled_dot_product_attention(torch.randn(2, 4), torch.randn(3, 5), torch.randn(3, 5)),
     ValueError, "last dimensions must match"),
    ("a float mask", lambda c: scaled_dot_product_attention(*_qkv(2, 3), mask=torch.ones(2, 2)), TypeError,
     "boolean tensor.*mask == 0"),
    ("a mask of the wrong size", lambda c: scaled_dot_product_attention(*_qkv(2, 3), mask=torch.ones(3, 3).bool()),
     ValueError, "does not broadcast"),
    ("(B, T_q, T_k) mask on 4-D inputs", lambda c: scaled_dot_product_attention(
        *_qkv(2, 4, 3, 5), mask=torch.ones(2, 3, 3).bool()), ValueError, "ambiguous.*unsqueeze\\(1\\)"),
    ("is_causal with T_q > T_k", lambda c: scaled_dot_product_attention(torch.randn(4, 2), *_qkv(3, 2)[:2],
                                                                         is_causal=True), ValueError, "T_q <= T_k"),
    ("causal_mask(0)", lambda c: causal_mask(0), ValueError, "1 <= n_queries"),
    ("padding_mask of ints", lambda c: padding_mask(torch.ones(2, 3)), ValueError, "boolean tensor"),
    ("MHA given float16", lambda c: c.mha(c.x.half()), TypeError,
     "float16 but the module's weights are torch.float32.*\\.to\\(torch.float32\\)"),
    ("MHA given float64", lambda c: c.mha(c.x.double()), TypeError, "float64 but the module's weights"),
    ("MHA given ints", lambda c: c.mha(torch.ones(2, 3, 8, dtype=torch.long)), TypeError, "floating-point.*float"),
    ("MHA given a list", lambda c: c.mha([[0.0] * 8]), TypeError, "queries_in must be a tensor"),
    ("MHA given 2-D", lambda c: c.mha(torch.randn(3, 8)), ValueError, "\\(batch, time, d_model=8\\)"),
    ("MHA given the wrong width", lambda c: c.mha(torch.randn(2, 3, 6)), ValueError, "d_model=8"),
    ("MHA keys of another batch", lambda c: c.mha(c.x, torch.randn(2, 3, 8)), ValueError, "Batch sizes"),
    ("MHA raw (B, S) mask, B == S", lambda c: c.mha(c.x, mask=c.real), ValueError,
     "ambiguous.*padding_mask\\(real\\).*mask\\[None\\]"),
    ("MHA raw (B, S) mask, B != S", lambda c: c.mha(c.x[:2], mask=c.real[:2]), ValueError,
     "looks like a \\(batch, keys\\) real-token mask.*padding_mask\\(real\\)"),
    ("heads loop raw (B, S) mask", lambda c: attention_heads_loop(c.mha, c.x, c.x, c.x, c.real), ValueError,
     "ambiguous.*padding_mask"),
    ("MHA a mask list", lambda c: c.mha(c.x, mask=[[True]]), TypeError, "mask must be a boolean tensor"),
    ("MHA n_heads not dividing", lambda c: MultiHeadAttention(8, 3), ValueError, "divisible.*Try n_heads"),
    ("attend keys of another shape", lambda c: c.mha.attend(c.x, torch.randn(3, 2, 3, 5), torch.randn(3, 2, 3, 5)),
     ValueError, "project_keys_values"),
    ("attend keys a list", lambda c: c.mha.attend(c.x, [1.0], [1.0]), TypeError, "keys must be a tensor"),
    ("split_heads given 4-D", lambda c: split_heads(torch.randn(2, 3, 4, 8), 2), ValueError,
     "shape \\(2, 3, 4, 8\\).*3-D tensor \\(batch, time, d_model\\)"),
    ("split_heads given 2-D", lambda c: split_heads(torch.randn(3, 8), 2), ValueError, "3-D tensor"),
    ("split_heads, heads not dividing", lambda c: split_heads(torch.randn(2, 3, 8), 3), ValueError, "not divisible"),
    ("split_heads, 0 heads", lambda c: split_heads(torch.randn(2, 3, 8), 0), ValueError, "at least 1"),
    ("merge_heads given 3-D", lambda c: merge_heads(torch.randn(2, 3, 8)), ValueError,
     "4-D tensor \\(batch, n_heads, time, d_head\\)"),
    ("Transformer given 1-D ids",
     lambda c: c.model(torch.ones(3).long(), torch.ones(3).bool(), torch.ones(1, 2).long()),
     ValueError, "unsqueeze\\(0\\)"),
    ("Transformer given floats", lambda c: c.model.encode(torch.ones(1, 3), torch.ones(1, 3).bool()), TypeError,
     "integer token ids"),
    ("Transformer id out of range", lambda c: c.model.encode(torch.full((1, 3), 60), torch.ones(1, 3).bool()),
     ValueError, "token id 60.*vocab size disagree"),
    ("Transformer source too long", lambda c: c.model.encode(torch.ones(1, 12).long(), torch.ones(1, 12).bool()),
     ValueError, "positional table covers 10.*cut the sequence"),
    ("Transformer mask of ints", lambda c: c.model.encode(torch.ones(1, 3).long(), torch.ones(1, 3).long()),
     ValueError, "src_mask must be a boolean tensor"),
]


def _hidden_nan_changes_nothing(fast: bool, bad: float, where: str) -> bool:
    torch.manual_seed(1)
    queries, keys, values = _qkv(2, 2, 4, 8)  # (B, heads, T, d)
    real = torch.tensor([[True] * 4, [True, True, False, False]])
    clean, _ = scaled_dot_product_attention(queries, keys, values, padding_mask(real), fast=fast)
    spoiled = (keys if where == "keys" else values).clone()
    spoiled[1, :, 2:] = bad  # the padding of sentence 1
    args = (queries, spoiled, values) if where == "keys" else (queries, keys, spoiled)
    out, _ = scaled_dot_product_attention(*args, padding_mask(real), fast=fast)
    return torch.equal(out, clean)


def _mha_hidden_nan(c, fast: bool) -> bool:
    c.mha.fast = fast
    mask = padding_mask(c.real)
    spoiled = c.x.clone()
    spoiled[2, 1:] = float("nan")  # padding positions of sentence 2
    out, _ = c.mha(spoiled, mask=mask)
    clean, _ = c.mha(c.x, mask=mask)
    c.mha.fast = True
    return torch.allclose(out[2, :1], clean[2, :1]) and torch.isfinite(out[:2]).all()


def _gradients_finite_with_hidden_nan() -> bool:
    queries, keys, values = _qkv(2, 3, 4)
    keys, values = keys.requires_grad_(), values.clone().requires_grad_()
    spoiled = torch.cat([keys[:, :2], torch.full((2, 1, 4), float("nan"))], dim=1)
    mask = torch.tensor([True, True, False])
    queries.requires_grad_()
    out, _ = scaled_dot_product_attention(queries, spoiled, values, mask)
    out.sum().backward()
    return bool(torch.isfinite(queries.grad).all() and torch.isfinite(keys.grad).all())


ATTENTION_HANDLED = [
    *[(f"{bad} in hidden {where}, {'fast' if fast else 'teaching'} path",
       lambda c, fast=fast, bad=bad, where=where: _hidden_nan_changes_nothing(fast, bad, where))
      for fast in (False, True) for bad in (float("nan"), float("inf")) for where in ("keys", "values")],
    ("NaN at padding through MHA, teaching path", lambda c: _mha_hidden_nan(c, False)),
    ("NaN at padding through MHA, fast path", lambda c: _mha_hidden_nan(c, True)),
    ("gradients finite with a NaN hidden key", lambda c: _gradients_finite_with_hidden_nan()),
    ("causal mask with B == T", lambda c: torch.allclose(c.mha(c.x, mask=causal_mask(3))[0],
                                                         c.mha(c.x, is_causal=True)[0], atol=1e-6)),
    ("all-True 2-D mask with B == T", lambda c: torch.allclose(c.mha(c.x, mask=torch.ones(3, 3).bool())[0],
                                                               c.mha(c.x)[0], atol=1e-6)),
    ("(1, S) mask with B == 1", lambda c: torch.allclose(c.mha(c.x[2:], mask=c.real[2:])[0],
                                                          c.mha(c.x[2:], mask=padding_mask(c.real[2:]))[0])),
    ("bfloat16 under autocast", lambda c: _autocast_runs(c)),
]


def _autocast_runs(c) -> bool:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = c.mha(c.x)
    return out.shape == c.x.shape


# -- runtime and environment variables --------------------------------------------------------

def _env(monkeypatch, name, value):
    monkeypatch.setenv(name, str(value))


RUNTIME_ERRORS = [
    ("unknown device name", lambda c, m: runtime.get_device("gpu"), DeviceError, "Unknown device 'gpu'.*'cpu'"),
    ("TL_DEVICE unknown", lambda c, m: (_env(m, "TL_DEVICE", "tpu"), runtime.get_device()), DeviceError,
     "Unknown device 'tpu'"),
    ("TL_QUICK not understood", lambda c, m: (_env(m, "TL_QUICK", "maybe"), runtime.is_quick()), ValueError,
     "TL_QUICK='maybe' is not understood: use 1"),
    ("TL_CHECKPOINT_DIR a file", lambda c, m: (_env(m, "TL_CHECKPOINT_DIR", c.folder / "a_file"),
                                               runtime.checkpoint_dir()), NotADirectoryError,
     "names a file, not a folder.*point it at a folder"),
    ("TL_CHECKPOINT_DIR under a file", lambda c, m: (_env(m, "TL_CHECKPOINT_DIR", c.folder / "a_file" / "x"),
                                                     runtime.checkpoint_dir()), OSError,
     "Cannot create the checkpoint folder.*set TL_CHECKPOINT_DIR"),
    ("TL_CACHE_DIR a file", lambda c, m: (_env(m, "TL_CACHE_DIR", c.folder / "a_file"), tokenizer.cache_dir()),
     NotADirectoryError, "TL_CACHE_DIR=.*names a file.*point it at a folder"),
    ("seed a float", lambda c, m: runtime.seed_everything(0.5), ValueError, "seed must be a whole number"),
    ("seed negative", lambda c, m: runtime.seed_everything(-1), ValueError, "0 .. 2\\*\\*32 - 1"),
    ("Trainer given a string optimizer", lambda c, m: Trainer(c.linear, "adam", "cpu"), TypeError,
     "torch.optim.Optimizer.*torch.optim.Adam"),
    ("Trainer device None", lambda c, m: Trainer(c.linear, _adam(c), None), TypeError, "device must be"),
    ("fit for '3' epochs", lambda c, m: _trainer(c).fit(lambda epoch: [], epochs="3"), TypeError,
     "epochs must be a whole number"),
    ("fit for -1 steps", lambda c, m: _trainer(c).fit(lambda epoch: [], max_steps=-1), ValueError,
     "max_steps must be at least 0"),
    ("fit on a list of batches", lambda c, m: _trainer(c).fit([1, 2], epochs=1), TypeError,
     "make_batches must be a function of the epoch.*lambda epoch"),
    ("loss of float targets", lambda c, m: sequence_loss(torch.randn(2, 3, 5), torch.zeros(2, 3),
                                                          torch.ones(2, 3).bool()), TypeError, "token ids"),
    ("loss of targets out of range", lambda c, m: sequence_loss(torch.randn(2, 3, 5), torch.full((2, 3), 7),
                                                                 torch.ones(2, 3).bool()), ValueError,
     "outside 0 .. 4.*vocab size disagree"),
]


def _trainer(c):
    return Trainer(c.linear, _sgd(c), "cpu", progress=False)

CUDA_ERRORS = [
    ("get_device('cuda')", lambda c, m: runtime.get_device("cuda"), DeviceError, "CUDA device was asked for"),
    ("get_device('cuda:1')", lambda c, m: runtime.get_device("cuda:1"), DeviceError, "CUDA device was asked for"),
    ("TL_DEVICE=cuda", lambda c, m: (_env(m, "TL_DEVICE", "cuda"), runtime.get_device()), DeviceError,
     "CUDA device was asked for.*ask for 'cpu'"),
    ("precision helper on CUDA", lambda c, m: runtime.amp_settings("cuda"), DeviceError, "CUDA device was asked for"),
    ("Trainer on CUDA", lambda c, m: Trainer(c.linear, _adam(c), "cuda"), DeviceError, "CUDA device was asked for"),
    ("Trainer on torch.device('cuda')", lambda c, m: Trainer(c.linear, _adam(c), torch.device("cuda")), DeviceError,
     "CUDA device was asked for"),
]

RUNTIME_HANDLED = [
    ("TL_DEVICE with spaces and capitals", lambda c, m: (_env(m, "TL_DEVICE", " CPU "),
                                                         runtime.get_device())[1].type == "cpu"),
    ("TL_QUICK=yes", lambda c, m: (_env(m, "TL_QUICK", "yes"), runtime.is_quick())[1] is True),
    ("TL_CHECKPOINT_DIR missing is created", lambda c, m: (_env(m, "TL_CHECKPOINT_DIR", c.folder / "new" / "dir"),
                                                           runtime.checkpoint_dir())[1].is_dir()),
    ("a NumPy seed", lambda c, m: runtime.seed_everything(np.int64(3)) is None),
]


# -- the command lines (in-process) -----------------------------------------------------------

def _cli(module, argv, capsys, monkeypatch, stdin: str = "Ein Hund.\n"):
    import io
    monkeypatch.setattr("sys.stdin", types.SimpleNamespace(buffer=io.BytesIO(stdin.encode())))
    code = module.main(argv)
    return code, capsys.readouterr().err


CLI_ERRORS = [
    ("translate, checkpoint a folder", translate, lambda c: ["--checkpoint", str(c.folder)], 1,
     "translate: error: .*is a folder, not a checkpoint.*model.pt"),
    ("translate, unknown device", translate, lambda c: ["--checkpoint", str(c.good), "--device", "gpu"], 1,
     "translate: error: Unknown device 'gpu'"),
    ("translate, missing input file", translate, lambda c: ["--checkpoint", str(c.good), str(c.folder / "no.txt")],
     1, "translate: error: No input file"),
    ("translate, a model without tokenizer", translate, lambda c: ["--checkpoint", str(c.good)], 1,
     "translate: error: .*(not a Transformer|holds no model config|holds no tokenizer)"),
    ("train, --out under a file", train, lambda c: ["--preset", "quick", "--out", str(c.folder / "a_file" / "run")],
     1, "train: error: --out .*cannot create this folder.*give a folder you can write to"),
    ("train, --out a file", train, lambda c: ["--preset", "quick", "--out", str(c.folder / "a_file")], 1,
     "train: error: --out .* is a file; give a folder"),
    ("train, unknown device", train, lambda c: ["--preset", "quick", "--out", str(c.folder / "r"), "--set",
                                                "device=gpu"], 1, "train: error: Unknown device 'gpu'"),
]


# -- the tests --------------------------------------------------------------------------------

ERRORS = CHECKPOINT_ERRORS + ATTENTION_ERRORS
HANDLED = CHECKPOINT_HANDLED + ATTENTION_HANDLED


def _assert_clear(caught, words):
    message = str(caught.value)
    assert re.search(words, message, flags=re.S), message
    assert len(message) < 450, f"too long ({len(message)} characters): {message}"


@pytest.mark.parametrize("call, error, words", [row[1:] for row in ERRORS], ids=[row[0] for row in ERRORS])
def test_bad_input_is_a_clear_error(c, call, error, words):
    with pytest.raises(error) as caught:
        call(c)
    _assert_clear(caught, words)


@pytest.mark.parametrize("call", [row[1] for row in HANDLED], ids=[row[0] for row in HANDLED])
def test_odd_input_is_handled(c, call):
    assert call(c)


@pytest.mark.parametrize("call, error, words", [row[1:] for row in RUNTIME_ERRORS + CUDA_ERRORS],
                         ids=[row[0] for row in RUNTIME_ERRORS + CUDA_ERRORS])
def test_bad_runtime_input_is_a_clear_error(c, monkeypatch, call, error, words):
    if (call, error, words) in [row[1:] for row in CUDA_ERRORS] and not NO_CUDA:
        pytest.skip("this machine has a GPU")
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    with pytest.raises(error) as caught:
        call(c, monkeypatch)
    _assert_clear(caught, words)


@pytest.mark.parametrize("call", [row[1] for row in RUNTIME_HANDLED], ids=[row[0] for row in RUNTIME_HANDLED])
def test_odd_runtime_input_is_handled(c, monkeypatch, call):
    assert call(c, monkeypatch)


@pytest.mark.parametrize("module, argv, code, words", [row[1:] for row in CLI_ERRORS],
                         ids=[row[0] for row in CLI_ERRORS])
def test_command_line_mistakes_are_one_line(c, capsys, monkeypatch, module, argv, code, words):
    returned, err = _cli(module, argv(c), capsys, monkeypatch)
    assert returned == code, err
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert re.search(words, lines[0]), err


def test_robustness_table_counts_the_test_tables():
    """docs/robustness.md's numbers are the lengths of these tables (and of tests/test_bad_input_text.py's)."""
    from pathlib import Path

    import test_bad_input_text as text

    counted = {
        "data files": (len(text.DATA_ERRORS), 0),
        "tokenizer": (len(text.TOKENIZER_ERRORS), len(text.TOKENIZER_HANDLED)),
        "translation and BLEU": (len(text.TRANSLATE_ERRORS), len(text.TRANSLATE_HANDLED)),
        "batching and decoding": (len(text.BATCH_DECODE_ERRORS), len(text.BATCH_DECODE_HANDLED)),
        "checkpoints": (len(CHECKPOINT_ERRORS), len(CHECKPOINT_HANDLED)),
        "attention modules": (len(ATTENTION_ERRORS), len(ATTENTION_HANDLED)),
        "runtime, training and environment variables": (len(RUNTIME_ERRORS) + len(CUDA_ERRORS),
                                                        len(RUNTIME_HANDLED)),
        "command line": (len(CLI_ERRORS), 0),
        "exercise tools": (len(text.EXERCISE_ERRORS), 0),
    }
    rows = {}
    for line in (Path(__file__).parents[1] / "docs" / "robustness.md").read_text().splitlines():
        cells = [cell.strip().strip("*") for cell in line.strip("|").split("|")]
        if len(cells) == 7 and cells[1].isdigit():
            rows[cells[0]] = tuple(int(cell) for cell in cells[1:6])
    for category, (errors, handled) in counted.items():
        assert rows[category] == (errors + handled, errors, handled, 0, 0), category
    total = tuple(sum(column) for column in zip(*(rows[c] for c in counted), strict=True))
    assert rows["all"] == total
