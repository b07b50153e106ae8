"""Bad input to the text side of the package: data files, the tokenizer, translation and BLEU, batching and
decoding (issue 13).

Each row of a table is one mistake a student makes. ``ERRORS`` rows must raise the error type given,
with a message that matches the words given (the problem *and* what to do); ``HANDLED`` rows must
give the right result. docs/robustness.md counts these tables. One tiny tokenizer and one tiny
untrained model serve the whole module (no training; the tokenizer trains in well under a second).
"""

from __future__ import annotations

import gzip
import json
import re
import types

import numpy as np
import pytest
import torch

from transformer_lesson import data, exercises
from transformer_lesson.batching import TranslationData, make_batch, pad_sequences, token_budget_batches
from transformer_lesson.data import CorpusError
from transformer_lesson.decoding import beam_search, greedy_decode
from transformer_lesson.evaluation import bleu_by_length, corpus_bleu, evaluate_bleu, lowercased_bleu, translate
from transformer_lesson.runtime import DeviceError
from transformer_lesson.seq2seq import Seq2SeqConfig
from transformer_lesson.tokenizer import Tokenizer, train_tokenizer
from transformer_lesson.transformer import Transformer, TransformerConfig
from transformer_lesson.translate import read_lines

WORDS = ("Hund Katze Mann Frau Kind Ball Haus Straße rot blau grün spielt läuft sitzt steht schnell langsam "
         "dog cat man woman child ball house street red blue green plays runs sits stands fast slow").split()


@pytest.fixture(scope="module")
def c(tmp_path_factory):
    """The shared objects: a tokenizer, models, files."""
    texts = [" ".join(WORDS[(i * k) % len(WORDS)] for k in range(1, 6 + i % 5)) + "." for i in range(200)]
    tok = train_tokenizer(texts, 300, use_cache=False)
    torch.manual_seed(0)

    def transformer(vocab):
        config = TransformerConfig(src_vocab_size=vocab, d_model=16, n_heads=2, n_encoder_layers=1,
                                   n_decoder_layers=1, d_ff=16, max_len=32)
        return Transformer(config).eval()

    folder = tmp_path_factory.mktemp("bad")
    truncated = folder / "truncated.model"
    truncated.write_bytes(tok.model_proto[: len(tok.model_proto) // 2])
    return types.SimpleNamespace(tok=tok, texts=texts, model=transformer(tok.vocab_size),
                                 small_model=transformer(tok.vocab_size - 10), folder=folder, truncated=truncated)


def _write(path, data_bytes, compress=False):
    path.write_bytes(gzip.compress(data_bytes) if compress else data_bytes)
    return path


def _parallel(c, de: bytes, en: bytes, compress=False):
    suffix = ".gz" if compress else ""
    return data.load_parallel(_write(c.folder / f"x.de{suffix}", de, compress),
                              _write(c.folder / f"x.en{suffix}", en, compress))


# -- data files -------------------------------------------------------------------------------

DATA_ERRORS = [
    ("empty file", lambda c: _parallel(c, b"", b""), CorpusError, "holds no sentences.*download it again|"
                                                                     "holds no sentences.*Restore"),
    ("gzip of empty text", lambda c: _parallel(c, b"", b"", compress=True), CorpusError, "holds no sentences"),
    ("truncated gzip", lambda c: data.read_lines(_write(c.folder / "t.gz", gzip.compress(b"Ein Hund.\n" * 50)[:20])),
     CorpusError, "not a valid gzip"),
    ("missing file", lambda c: data.read_lines(c.folder / "nothing.de"), CorpusError, "missing"),
    ("an empty line", lambda c: _parallel(c, b"Ein Hund.\n\nEine Katze.\n", b"A dog.\nx\nA cat.\n"),
     CorpusError, "line 2 is empty.*every line must hold a sentence"),
    ("sides not aligned", lambda c: _parallel(c, b"Ein Hund.\nEine Katze.\n", b"A dog.\n"),
     CorpusError, "2 lines.*1.*aligned line by line"),
    ("not UTF-8", lambda c: data.read_lines(_write(c.folder / "latin1.de", "Straße\n".encode("latin-1"))),
     CorpusError, "UTF-8"),
    ("tab file with one field",
     lambda c: data.read_tab_pairs(_write(c.folder / "t.txt", b"A dog.\tEin Hund.\nA cat.\n")), CorpusError, "line 2"),
    ("manifest line malformed", lambda c: data.read_manifest(_write(c.folder / "SHA256SUMS", b"abc x.gz\n").parent),
     CorpusError, "expected '<sha256>  <file>'"),
    ("unknown split", lambda c: data.load_multi30k("dev"), ValueError, "Unknown split 'dev'.*choose one of"),
    ("limit=True", lambda c: data.load_multi30k("val", limit=True), ValueError, "limit must be a non-negative"),
    ("limit negative", lambda c: data.load_multi30k("val", limit=-1), ValueError, "limit must be a non-negative"),
    ("limit a string", lambda c: data.load_multi30k("val", limit="5"), ValueError, "limit must be a non-negative"),
]


# -- tokenizer --------------------------------------------------------------------------------

TOKENIZER_ERRORS = [
    ("encode a list", lambda c: c.tok.encode(["Ein Hund.", "Eine Katze."]), TypeError, "one string.*encode_batch"),
    ("encode None", lambda c: c.tok.encode(None), TypeError, "encode takes one string, got None"),
    ("encode bytes", lambda c: c.tok.encode(b"Ein Hund."), TypeError, "encode takes one string"),
    ("encode_batch a string", lambda c: c.tok.encode_batch("Ein Hund."), TypeError, "got one string.*use encode"),
    ("encode_batch None", lambda c: c.tok.encode_batch(None), TypeError, "list of sentences.*got None"),
    ("encode_batch an int item", lambda c: c.tok.encode_batch(["Ein Hund.", 3]), TypeError, "item 1 is a int"),
    ("encode_batch nested", lambda c: c.tok.encode_batch([["Ein Hund."]]), TypeError, "item 0.*flat list"),
    ("decode out of range", lambda c: c.tok.decode([5, 99999]), ValueError, "token id 99999.*ids 0 .. 299.*another"),
    ("decode negative id", lambda c: c.tok.decode([-1]), ValueError, "token id -1.*ids 0 .. 299"),
    ("decode a 2-D tensor", lambda c: c.tok.decode(torch.ones(2, 3, dtype=torch.long)), TypeError,
     "1-D.*decode_batch"),
    ("decode a list of lists", lambda c: c.tok.decode([[5, 6], [7]]), TypeError, "item 0.*decode_batch"),
    ("decode float tensor", lambda c: c.tok.decode(torch.tensor([5.0, 6.0])), TypeError, "integer token ids"),
    ("decode a string", lambda c: c.tok.decode("5 6"), TypeError, "list of token ids.*got '5 6'"),
    ("decode None", lambda c: c.tok.decode(None), TypeError, "list of token ids.*got None"),
    ("decode float items", lambda c: c.tok.decode([5.5]), TypeError, "item 0 is a float.*not a token id"),
    ("decode_batch one sequence", lambda c: c.tok.decode_batch([5, 6, 7]), TypeError, "one list of ids.*use decode"),
    ("decode_batch a 1-D tensor", lambda c: c.tok.decode_batch(torch.tensor([5, 6])), TypeError, "use decode"),
    ("decode_batch out of range", lambda c: c.tok.decode_batch([[5], [400]]), ValueError, "token id 400"),
    ("id_to_piece out of range", lambda c: c.tok.id_to_piece(300), ValueError, "token id 300.*0 .. 299"),
    ("id_to_piece a string", lambda c: c.tok.id_to_piece("5"), TypeError, "whole number"),
    ("pieces of a list", lambda c: c.tok.pieces(["Ein Hund."]), TypeError, "one string"),
    ("truncated model file", lambda c: Tokenizer.load(c.truncated), ValueError,
     "not a SentencePiece model.*train the tokenizer again"),
    ("random bytes as model", lambda c: Tokenizer(b"\x00\x01garbage" * 10), ValueError, "not a SentencePiece model"),
    ("model from a path string", lambda c: Tokenizer(str(c.truncated)), TypeError, "Tokenizer.load"),
    ("missing model file", lambda c: Tokenizer.load(c.folder / "none.model"), FileNotFoundError,
     "No tokenizer model file.*train_tokenizer"),
    ("model file is a folder", lambda c: Tokenizer.load(c.folder), FileNotFoundError, "is a folder"),
    ("save to a folder", lambda c: c.tok.save(c.folder), IsADirectoryError, "is a folder.*tokenizer.model"),
    ("train on a string", lambda c: train_tokenizer("Ein Hund.", 300, use_cache=False), TypeError,
     "one string.*wrap it"),
    ("train on None", lambda c: train_tokenizer(None, 300, use_cache=False), TypeError, "list of sentences"),
    ("train on numbers", lambda c: train_tokenizer([1, 2], 300, use_cache=False), TypeError, "item 0"),
    ("train on nothing", lambda c: train_tokenizer([], 300, use_cache=False), ValueError, "no text"),
    ("train on blanks", lambda c: train_tokenizer(["", "  "], 300, use_cache=False), ValueError, "no text"),
    ("vocab too small", lambda c: train_tokenizer(c.texts, 100, use_cache=False), ValueError, "exceed 260"),
    ("vocab too large", lambda c: train_tokenizer(c.texts[:20], 5000, use_cache=False), ValueError,
     "vocab_size=5000 is more than.*lower vocab_size or train on more text"),
    ("vocab a float", lambda c: train_tokenizer(c.texts, 300.0, use_cache=False), TypeError, "whole number"),
    ("unknown model type", lambda c: train_tokenizer(c.texts, 300, model_type="wordpiece", use_cache=False),
     ValueError, "model_type='wordpiece'.*use one of"),
]

TOKENIZER_HANDLED = [
    ("train on a generator", lambda c: train_tokenizer((t for t in c.texts), 300, use_cache=False).vocab_size == 300),
    ("decode a 1-D tensor", lambda c: c.tok.decode(torch.tensor(c.tok.encode("Hund"))) == "Hund"),
    ("decode_batch a 2-D tensor", lambda c: c.tok.decode_batch(torch.tensor([c.tok.encode("Hund")])) == ["Hund"]),
    ("decode stops at <eos>, skips <pad>", lambda c: c.tok.decode([0, *c.tok.encode("Hund"), 2, 7]) == "Hund"),
    ("encode_batch a tuple", lambda c: c.tok.encode_batch(("Hund",)) == [c.tok.encode("Hund")]),
]


# -- translation and BLEU ---------------------------------------------------------------------

TRANSLATE_ERRORS = [
    ("translate None", lambda c: translate(c.model, c.tok, None, "cpu"), TypeError, "list of sentences.*got None"),
    ("a non-string element", lambda c: translate(c.model, c.tok, ["Ein Hund.", 3], "cpu"), TypeError,
     "item 1 is a int"),
    ("nested sentences", lambda c: translate(c.model, c.tok, [["Ein Hund."]], "cpu"), TypeError, "flat list"),
    ("batch_size=0", lambda c: translate(c.model, c.tok, ["Hund"], "cpu", batch_size=0), ValueError,
     "batch_size must be at least 1, got 0"),
    ("batch_size a float", lambda c: translate(c.model, c.tok, ["Hund"], "cpu", batch_size=2.0), TypeError,
     "batch_size must be a whole number"),
    ("beam_size=0", lambda c: translate(c.model, c.tok, ["Hund"], "cpu", beam_size=0), ValueError,
     "beam_size must be at least 1"),
    ("max_len=0", lambda c: translate(c.model, c.tok, ["Hund"], "cpu", max_len=0), ValueError,
     "max_len must be at least 1"),
    ("negative alpha", lambda c: translate(c.model, c.tok, ["Hund"], "cpu", beam_size=2, alpha=-1), ValueError,
     "alpha must be a finite number >= 0"),
    ("model vocabulary smaller", lambda c: translate(c.small_model, c.tok, ["Hund"], "cpu"), ValueError,
     "vocabulary has 290 ids but the tokenizer's has 300.*tokenizer the model was trained with"),
    ("RNN vocabulary smaller", lambda c: translate(types.SimpleNamespace(config=Seq2SeqConfig(vocab_size=50)),
                                                   c.tok, ["Hund"], "cpu"), ValueError, "has 50 ids but"),
    ("no tokenizer", lambda c: translate(c.model, None, ["Hund"], "cpu"), TypeError, "tokenizer must be a Tokenizer"),
    ("CUDA without CUDA", lambda c: translate(c.model, c.tok, ["Hund"], "cuda"), DeviceError,
     "CUDA device was asked for.*ask for 'cpu'"),
    ("unknown device name", lambda c: translate(c.model, c.tok, ["Hund"], "gpu"), DeviceError,
     "Unknown device 'gpu'.*use 'cuda'"),
    ("device None", lambda c: translate(c.model, c.tok, ["Hund"], None), TypeError, "device must be.*get_device"),
    ("BLEU with a None hypothesis", lambda c: corpus_bleu(["a dog", None], ["a dog", "a cat"]), TypeError,
     "hypotheses: item 1 is None"),
    ("BLEU of empty lists", lambda c: corpus_bleu([], []), ValueError, "hypotheses is empty.*at least one"),
    ("BLEU references nested", lambda c: corpus_bleu(["a dog"], [["a dog"]]), TypeError,
     "references: item 0 is a list.*one flat list"),
    ("BLEU lengths differ", lambda c: corpus_bleu(["a dog"], ["a dog", "a cat"]), ValueError,
     "1 hypotheses but 2 references.*one reference per hypothesis"),
    ("BLEU of one string", lambda c: corpus_bleu("a dog", "a dog"), TypeError, "got one string.*wrap it"),
    ("lowercased BLEU None", lambda c: lowercased_bleu(None, ["a"]), TypeError, "hypotheses must be a list"),
    ("BLEU by length, sources short", lambda c: bleu_by_length(["x"], ["a", "b"], ["a", "b"]), ValueError,
     "1 sources but 2 hypotheses"),
    ("BLEU by length, None source", lambda c: bleu_by_length([None], ["a"], ["a"]), TypeError, "sources: item 0"),
    ("evaluate_bleu given strings", lambda c: evaluate_bleu(c.model, c.tok, ["Ein Hund.", "A dog."], "cpu"),
     TypeError, "item 0 is 'Ein Hund.'.*list\\(zip\\(sources, targets\\)\\)"),
    ("evaluate_bleu given one string", lambda c: evaluate_bleu(c.model, c.tok, "Ein Hund.", "cpu"), TypeError,
     "got one string"),
    ("evaluate_bleu given no pairs", lambda c: evaluate_bleu(c.model, c.tok, [], "cpu"), ValueError,
     "is empty.*at least one"),
    ("evaluate_bleu given triples", lambda c: evaluate_bleu(c.model, c.tok, [("a", "b", "c")], "cpu"), TypeError,
     "item 0 is a tuple"),
    ("TranslationData of strings", lambda c: TranslationData(["Ein Hund.", "A dog."], c.tok), TypeError,
     "pairs.*item 0 is 'Ein Hund.'"),
    ("TranslationData of None", lambda c: TranslationData(None, c.tok), TypeError, "list of \\(source, target\\)"),
    ("TranslationData, a None side", lambda c: TranslationData([("Ein Hund.", None)], c.tok), TypeError,
     "item 0 is a tuple"),
    ("TranslationData without tokenizer", lambda c: TranslationData([("a", "b")], None), TypeError,
     "tokenizer must be a Tokenizer"),
    ("TranslationData max_len float", lambda c: TranslationData([("a", "b")], c.tok, max_len=8.5), TypeError,
     "max_len must be a whole number"),
    ("read_lines of a string", lambda c: read_lines("Ein Hund.\n"), TypeError, "bytes of a file.*read_bytes"),
    ("TranslationData an empty side", lambda c: TranslationData([("a", " ")], c.tok), ValueError,
     "Pair 0 has an empty side"),
]

TRANSLATE_HANDLED = [
    ("one string gives one string", lambda c: isinstance(translate(c.model, c.tok, "Hund", "cpu", max_len=3), str)),
    ("an empty list", lambda c: translate(c.model, c.tok, [], "cpu") == []),
    ("a generator of sentences", lambda c: len(translate(c.model, c.tok, (s for s in ["Hund", "Ball"]), "cpu",
                                                          max_len=3)) == 2),
    ("an empty sentence gives ''", lambda c: _warns(lambda: translate(c.model, c.tok, ["", "Hund"], "cpu",
                                                                        max_len=3))[0] == ""),
    ("a torch.device", lambda c: len(translate(c.model, c.tok, ["Hund"], torch.device("cpu"), max_len=3)) == 1),
    ("BLEU of tuples", lambda c: corpus_bleu(("a dog runs in the park",), ("a dog runs in the park",)).score > 99.99),
]


# -- batching and decoding -------------------------------------------------------------------

SRC, SRC_MASK = torch.tensor([[5, 6, 7]]), torch.ones(1, 3, dtype=torch.bool)

BATCH_DECODE_ERRORS = [
    ("pad_sequences of a string", lambda c: pad_sequences("Ein Hund."), TypeError, "got 'Ein Hund.'.*encode_batch"),
    ("pad_sequences of strings", lambda c: pad_sequences(["Ein", "Hund"]), TypeError, "item 0 is 'Ein'.*encode_batch"),
    ("pad_sequences of one id list", lambda c: pad_sequences([5, 6, 7]), TypeError, "item 0 is a int.*\\[ids\\]"),
    ("pad_sequences of floats", lambda c: pad_sequences([[5.7, 6.0]]), TypeError,
     "whole-number token ids.*float32.*nothing is rounded"),
    ("pad_sequences of booleans", lambda c: pad_sequences([[True, False]]), TypeError, "whole-number token ids"),
    ("pad_sequences of a generator", lambda c: pad_sequences([5] for _ in range(2)), TypeError,
     "list\\(\\.\\.\\.\\) of a generator"),
    ("pad_sequences of nothing", lambda c: pad_sequences([]), ValueError, "at least one sequence"),
    ("make_batch without <bos>", lambda c: make_batch([[5]], [[5, 2]]), ValueError, "start with <bos>"),
    ("token budget 0", lambda c: token_budget_batches([3, 4], 0), ValueError, "max_tokens must be positive"),
    ("greedy max_len 0", lambda c: greedy_decode(c.model, SRC, SRC_MASK, max_len=0), ValueError,
     "max_len must be at least 1"),
    ("greedy max_len a float", lambda c: greedy_decode(c.model, SRC, SRC_MASK, max_len=2.5), TypeError,
     "max_len must be a whole number"),
    ("greedy 1-D source", lambda c: greedy_decode(c.model, SRC[0], SRC_MASK[0], max_len=3), ValueError,
     "2-D tensor \\(batch, time\\).*unsqueeze\\(0\\)"),
    ("greedy without a mask", lambda c: greedy_decode(c.model, SRC, None, max_len=3), TypeError,
     "src_mask must be a 2-D tensor.*True at real tokens"),
    ("greedy source as a list", lambda c: greedy_decode(c.model, [[5, 6]], SRC_MASK, max_len=3), TypeError,
     "src must be a 2-D tensor"),
    ("greedy ids out of range", lambda c: greedy_decode(c.model, SRC + 400, SRC_MASK, max_len=3), ValueError,
     "token id 40.*vocab size disagree"),
    ("beam size 0", lambda c: beam_search(c.model, SRC, SRC_MASK, 0, 5), ValueError, "beam_size must be a positive"),
    ("beam max_len 0", lambda c: beam_search(c.model, SRC, SRC_MASK, 2, 0), ValueError, "max_len must be at least 1"),
    ("beam limits of another batch", lambda c: beam_search(c.model, SRC, SRC_MASK, 2, [5, 5]), ValueError,
     "2 limits for a batch of 1"),
    ("beam alpha a string", lambda c: beam_search(c.model, SRC, SRC_MASK, 2, 5, "x"), TypeError,
     "alpha must be a number"),
]

BATCH_DECODE_HANDLED = [
    ("pad_sequences of 1-D tensors", lambda c: pad_sequences([torch.tensor([5, 6]), [7]])[0].tolist() == [[5, 6],
                                                                                                        [7, 0]]),
    ("pad_sequences with an empty sequence", lambda c: pad_sequences([[5], []])[1].tolist() == [[True], [False]]),
    ("greedy with NumPy max_len", lambda c: len(greedy_decode(c.model, SRC, SRC_MASK, max_len=np.int64(2))[0]) <= 2),
]


def _warns(call):
    with pytest.warns(UserWarning):
        return call()


# -- exercise tools (the instructor's `python -m transformer_lesson.exercises`) --------------------

def _notebooks(c, name, content: bytes):
    """A folder holding one good notebook and one file `name` with `content`."""
    import nbformat

    folder = c.folder / f"nb-{name}"
    folder.mkdir(exist_ok=True)
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1 + 1")]), folder / "00_good.ipynb")
    (folder / name).write_bytes(content)
    return folder


_NOTEBOOK = b'{"cells": [{"cell_type": "code", "metadata": {}, "source": "1 + 1", "outputs": [], "execution_cou'
_UNCLOSED = json.dumps({"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [{
    "cell_type": "code", "id": "a", "source": "### BEGIN SOLUTION\nx = 1", "outputs": [], "execution_count": None,
    "metadata": {"nbgrader": {"grade": False, "solution": True, "locked": False, "task": False, "grade_id": "a",
                              "schema_version": 3}}}]}).encode()
EXERCISE_ERRORS = [
    ("student: truncated notebook", lambda c: exercises.build_student_notebooks(
        _notebooks(c, "01_cut.ipynb", _NOTEBOOK), c.folder / "out1"), exercises.ExerciseError,
     "01_cut.ipynb is not a readable notebook.*truncated.*Restore"),
    ("validate: an HTML page saved as a notebook", lambda c: exercises.read_notebook(
        _notebooks(c, "02_html.ipynb", b"<!DOCTYPE html><html>Not Found</html>") / "02_html.ipynb"),
     exercises.ExerciseError, "not a readable notebook.*Restore"),
    ("course: JSON that is not a notebook", lambda c: exercises.make_course(
        c.folder / "course", _notebooks(c, "03_json.ipynb", b'{"a": 1}')), exercises.ExerciseError,
     "03_json.ipynb is not a readable notebook"),
    ("empty notebook file", lambda c: exercises.read_notebook(_notebooks(c, "04_empty.ipynb", b"") / "04_empty.ipynb"),
     exercises.ExerciseError, "not a readable notebook"),
    ("invalid UTF-8", lambda c: exercises.read_notebook(
        _notebooks(c, "05_bytes.ipynb", b"\xff\xfe\x00garbage") / "05_bytes.ipynb"),
     exercises.ExerciseError, "not a readable notebook"),
    ("a folder without notebooks", lambda c: exercises.build_student_notebooks(c.folder / "nowhere", c.folder / "o"),
     exercises.ExerciseError, "No notebooks in"),
    ("a solution region never closed", lambda c: exercises.build_student_notebooks(
        _notebooks(c, "06_open.ipynb", _UNCLOSED), c.folder / "out6"), exercises.ExerciseError,
     "never closed by '### END SOLUTION'"),
    ("an assignment name with a space", lambda c: exercises.make_course(c.folder / "course2", c.folder, "lesson 1"),
     exercises.ExerciseError, "Assignment name.*letters, digits"),
]


def test_the_exercise_commands_report_a_damaged_notebook_in_one_line(c, capsys):
    folder = _notebooks(c, "01_cut.ipynb", _NOTEBOOK)
    for command in (["validate", "--source", str(folder)], ["student", "--source", str(folder), "--out",
                                                             str(c.folder / "cli-out")]):
        assert exercises.main(command) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "01_cut.ipynb is not a readable notebook" in err, err


ERRORS = DATA_ERRORS + TOKENIZER_ERRORS + TRANSLATE_ERRORS + BATCH_DECODE_ERRORS + EXERCISE_ERRORS
HANDLED = TOKENIZER_HANDLED + TRANSLATE_HANDLED + BATCH_DECODE_HANDLED


@pytest.mark.parametrize("call, error, words", [row[1:] for row in ERRORS], ids=[row[0] for row in ERRORS])
def test_bad_input_is_a_clear_error(c, call, error, words):
    with pytest.raises(error) as caught:
        call(c)
    message = str(caught.value)
    assert re.search(words, message, flags=re.S), message
    assert len(message) < 400, f"too long ({len(message)} characters): {message}"


@pytest.mark.parametrize("call", [row[1] for row in HANDLED], ids=[row[0] for row in HANDLED])
def test_odd_input_is_handled(c, call):
    assert call(c)
