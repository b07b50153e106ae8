"""Shared test settings and helpers: quick mode on, plots off-screen, one CPU thread for tiny models."""

import inspect
import os
import types

import matplotlib
import pytest
import torch

matplotlib.use("Agg")
os.environ.setdefault("TL_QUICK", "1")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread, and do not fight other processes for the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def own_copy():
    """``own_copy(f)``: the package's function ``f`` as a student who wrote the same code would have it.

    The checks refuse an answer that runs the package's own answer (its code object); a copy with a
    code object of its own tests that the check accepts the reference's numbers.
    """
    def copy(function):
        function = inspect.unwrap(function)
        twin = types.FunctionType(function.__code__.replace(), function.__globals__, function.__name__,
                                  function.__defaults__, function.__closure__)
        twin.__kwdefaults__ = function.__kwdefaults__
        return twin
    return copy


@pytest.fixture
def train_on_reverse():
    """Train a seq2seq model class on the toy reverse task; return exact-match accuracy on 300 fresh sequences."""
    from transformer_lesson.evaluation import exact_match
    from transformer_lesson.runtime import seed_everything
    from transformer_lesson.seq2seq import Seq2SeqConfig
    from transformer_lesson.toy import toy_batch, toy_vocab_size
    from transformer_lesson.training import Trainer

    def train(model_class, steps, min_len, max_len, d_hidden, n_symbols=8, seed=0):
        seed_everything(seed)
        config = Seq2SeqConfig(vocab_size=toy_vocab_size(n_symbols), d_embed=32, d_hidden=d_hidden,
                               dropout=0.0, d_attention=d_hidden)
        model = model_class(config)
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        data = torch.Generator().manual_seed(seed + 1)
        trainer = Trainer(model, optimizer, "cpu", progress=False)
        trainer.fit(lambda epoch: (toy_batch("reverse", 64, min_len, max_len, n_symbols, data)
                                   for _ in range(steps)), epochs=1)
        test = toy_batch("reverse", 300, min_len, max_len, n_symbols, torch.Generator().manual_seed(999))
        return exact_match(model, test)

    return train


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """`make test` runs on two workers (pytest-xdist). Each test module and each notebook goes to one
    worker as a whole (a notebook's cells share one kernel, in order). Lessons 09 and 10 go to the same
    worker, 09 first: lesson 10 loads the model that lesson 09 trains into the same checkpoint folder."""
    from xdist.scheduler import LoadScopeScheduling

    together = {"notebooks/10_decoding_and_analysis.ipynb": "notebooks/09_training_the_translator.ipynb"}

    class LessonScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            scope = super()._split_scope(nodeid)
            return together.get(scope, scope)

    return LessonScheduling(config, log)
