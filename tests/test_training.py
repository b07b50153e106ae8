"""The shared training loop: the masked loss, clipping, checkpoints, and exact resume."""

import warnings

import pytest
import torch
import torch.nn.functional as F

from transformer_lesson.checkpoint import CHECKPOINT_VERSION, CheckpointError, load_checkpoint, save_checkpoint
from transformer_lesson.plotting import plot_history
from transformer_lesson.rnn_attention import AttentionGRUSeq2Seq
from transformer_lesson.seq2seq import GRUSeq2Seq, Seq2SeqConfig
from transformer_lesson.toy import toy_batch
from transformer_lesson.training import History, Trainer, sequence_loss


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    yield


def config(**overrides):
    return Seq2SeqConfig(**{"vocab_size": 12, "d_embed": 8, "d_hidden": 16, "dropout": 0.3, **overrides})


def test_sequence_loss_averages_over_real_tokens_only():
    torch.manual_seed(0)
    logits, targets = torch.randn(2, 4, 7), torch.randint(1, 7, (2, 4))
    mask = torch.tensor([[True, True, True, True], [True, False, False, False]])
    expected = F.cross_entropy(logits[mask], targets[mask])
    torch.testing.assert_close(sequence_loss(logits, targets, mask), expected)
    changed = logits.clone()
    changed[1, 1:] = 100.0  # whatever the model says at padding does not matter
    torch.testing.assert_close(sequence_loss(changed, targets, mask), expected)
    smoothed = F.cross_entropy(logits[mask], targets[mask], label_smoothing=0.1)
    torch.testing.assert_close(sequence_loss(logits, targets, mask, label_smoothing=0.1), smoothed)
    with pytest.raises(ValueError, match="B, T"):
        sequence_loss(logits, targets[:, :3], mask)


def epoch_batches(epoch, n=7):
    """Deterministic per epoch, as Trainer.fit requires."""
    generator = torch.Generator().manual_seed(100 + epoch)
    return [toy_batch("reverse", 8, 2, 6, 8, generator) for _ in range(n)]


class Crash(Exception):
    """Stands for an interruption in the middle of training (a Colab disconnect)."""


def crash_at(make_batches, epoch: int, batch: int):
    """``make_batches``, except that epoch ``epoch`` raises :class:`Crash` when it reaches batch ``batch``."""

    def crashing(e):
        for i, item in enumerate(make_batches(e)):
            if e == epoch and i == batch:
                raise Crash
            yield item

    return crashing


def make_trainer(path=None, seed=0, every=4):
    torch.manual_seed(seed)
    model = GRUSeq2Seq(config())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=5, gamma=0.5)
    return Trainer(model, optimizer, "cpu", scheduler=scheduler, checkpoint_path=path,
                   checkpoint_every=every, config={"run": "test"}, tokenizer="fp-1", progress=False)


def assert_same_run(a, b):
    for (name, p), q in zip(a.model.state_dict().items(), b.model.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    assert a.history.losses == b.history.losses
    assert (a.step, a.epoch, a.position) == (b.step, b.epoch, b.position)
    assert a.scheduler.state_dict() == b.scheduler.state_dict()
    sa, sb = a.optimizer.state_dict()["state"], b.optimizer.state_dict()["state"]
    assert all(torch.equal(sa[k]["exp_avg_sq"], sb[k]["exp_avg_sq"]) for k in sa)


def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path):
    reference = make_trainer()
    reference.fit(epoch_batches, epochs=3)  # 21 steps, dropout on: uses the RNG every step
    reference_rng = torch.get_rng_state()

    path = tmp_path / "run.pt"
    interrupted = make_trainer(path)
    with pytest.raises(Crash):  # at global step 10; the last checkpoint was at step 8
        interrupted.fit(crash_at(epoch_batches, epoch=1, batch=3), epochs=3)
    assert load_checkpoint(path)["step"] == 8
    resumed = make_trainer(path, seed=123)  # a fresh process: different initial weights
    history = resumed.fit(epoch_batches, epochs=3)
    assert_same_run(reference, resumed)
    assert torch.equal(torch.get_rng_state(), reference_rng)
    assert len(history.losses) == 21 and history.steps == list(range(1, 22))


def test_a_version_1_checkpoint_with_one_random_state_still_resumes_exactly(tmp_path, capsys):
    reference = make_trainer()
    reference.fit(epoch_batches, max_steps=5)
    path = tmp_path / "run.pt"
    make_trainer(path).fit(epoch_batches, max_steps=3)
    payload = torch.load(path, weights_only=True)
    assert payload["version"] == CHECKPOINT_VERSION and len(payload["rng"]) == 1  # one random state per process
    version_1 = {k: v for k, v in payload.items() if k != "model_config"}  # as version 1 wrote it:
    torch.save({**version_1, "version": 1, "rng": payload["rng"][0], "model_class": "GRUSeq2Seq"}, path)
    resumed = make_trainer(path, seed=7)
    resumed.fit(epoch_batches, max_steps=5)
    assert_same_run(reference, resumed)

    torch.save({**payload, "rng": payload["rng"] * 2}, path)  # written by two processes
    capsys.readouterr()
    other_size = make_trainer(path)
    other_size.fit(epoch_batches, max_steps=4)  # resumes, keeping this process's own random state
    assert "written by 2 process(es), this run has 1" in capsys.readouterr().out
    assert other_size.step == 4 and other_size.history.steps == [1, 2, 3, 4]


def test_resume_from_a_stop_at_an_epoch_boundary_with_evaluation(tmp_path):
    evaluate = lambda model: {"first_weight": float(next(model.parameters()).flatten()[0])}
    reference = make_trainer()
    reference.fit(epoch_batches, epochs=2, evaluate=evaluate)
    path = tmp_path / "run.pt"
    make_trainer(path).fit(epoch_batches, max_steps=7, evaluate=evaluate)
    resumed = make_trainer(path, seed=5)
    resumed.fit(epoch_batches, epochs=2, evaluate=evaluate)
    assert_same_run(reference, resumed)
    assert [e["step"] for e in resumed.history.evals] == [7, 14]
    assert resumed.history.evals == reference.history.evals


def test_gradient_clipping_bounds_the_update():
    torch.manual_seed(0)
    model = GRUSeq2Seq(config(dropout=0.0))
    before = torch.cat([p.detach().flatten() for p in model.parameters()])
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=1.0), "cpu", clip_norm=0.01,
                      progress=False)
    history = trainer.fit(lambda epoch: epoch_batches(epoch, 1), max_steps=1)
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert history.grad_norms[0] > 0.01  # the raw gradient was larger...
    assert (after - before).norm() <= 0.01 + 1e-6  # ...but the step was clipped


def test_diverging_loss_raises_a_clear_error():
    model = GRUSeq2Seq(config())
    with torch.no_grad():
        model.decoder.out.bias.fill_(float("nan"))
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), "cpu", progress=False)
    with pytest.raises(FloatingPointError, match="diverged"):
        trainer.fit(epoch_batches, max_steps=1)


def test_checkpoint_errors_are_clear(tmp_path):
    model = GRUSeq2Seq(config())
    with pytest.raises(CheckpointError, match="No checkpoint"):
        load_checkpoint(tmp_path / "missing.pt", model)
    path = save_checkpoint(tmp_path / "good.pt", model, tokenizer="fp-1", config=config())
    assert [p.name for p in tmp_path.iterdir()] == ["good.pt"]  # no temporary file left behind
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(truncated, model)
    bare = tmp_path / "bare.pt"
    torch.save(model.state_dict(), bare)
    with pytest.raises(CheckpointError, match="not a transformer-lesson checkpoint"):
        load_checkpoint(bare, model)
    with pytest.raises(CheckpointError, match="different vocabulary"):
        load_checkpoint(path, model, tokenizer="fp-2")
    with pytest.raises(CheckpointError, match=r"decoder.out.weight: checkpoint has shape \(12, 40\), "
                                              r"the model has \(20, 40\)"):
        load_checkpoint(path, GRUSeq2Seq(config(vocab_size=20)))
    with pytest.raises(CheckpointError, match="in the model but not in the checkpoint"):
        load_checkpoint(path, AttentionGRUSeq2Seq(config()))
    other = GRUSeq2Seq(config())
    payload = load_checkpoint(path, other, tokenizer="fp-1")
    assert payload["config"]["vocab_size"] == 12
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values(),
                                                 strict=True))


def test_history_round_trips_and_plots():
    history = History()
    for step in range(1, 31):
        history.log_step(step, 0, 3.0 / step, 1e-3, 1.0)
    history.evals.append({"step": 30, "epoch": 0, "bleu": 12.5})
    again = History.from_state_dict(history.state_dict())
    assert again == history
    assert again.smoothed_losses(window=2)[1] == pytest.approx((3.0 + 1.5) / 2)
    fig = plot_history(again, "toy")
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["toy: loss", "toy: evaluation"] and all(ax.get_xlabel() for ax in fig.axes)


def test_changed_config_refuses_to_resume_and_names_the_file(tmp_path):
    path = tmp_path / "run.pt"
    make_trainer(path).fit(epoch_batches, max_steps=3)
    torch.manual_seed(0)
    model = GRUSeq2Seq(config())
    changed = Trainer(model, torch.optim.Adam(model.parameters(), lr=5e-3), "cpu", checkpoint_path=path,
                      config={"run": "test", "lr": 5e-3}, tokenizer="fp-1", progress=False)
    with pytest.raises(CheckpointError, match=rf"(?s){path}.*lr.*Delete {path} to train afresh"):
        changed.fit(epoch_batches, max_steps=6)
    assert changed.step == 0 and changed.optimizer.param_groups[0]["lr"] == 5e-3  # nothing was resumed
    with pytest.raises(CheckpointError, match=rf"(?s){path} does not fit.*delete {path} to train afresh"):
        load_checkpoint(path, GRUSeq2Seq(config(vocab_size=20)))


def test_numpy_values_paths_and_dataclasses_are_saved_as_plain_values(tmp_path):
    import numpy as np

    path = tmp_path / "run.pt"
    evaluate = lambda model: {"bleu": np.float64(12.5), "n": np.int64(3)}
    trainer = make_trainer(path)
    trainer.config = {"data": tmp_path / "data.txt", "model": config(), "scale": np.float32(0.5)}
    trainer.fit(epoch_batches, max_steps=2, evaluate=evaluate)
    payload = load_checkpoint(path)  # weights_only=True accepts it
    assert payload["config"]["data"] == str(tmp_path / "data.txt")
    assert payload["config"]["model"]["vocab_size"] == 12 and payload["config"]["scale"] == 0.5
    assert payload["history"]["evals"] == [{"step": 2, "epoch": 0, "bleu": 12.5, "n": 3}]
    assert type(payload["history"]["evals"][0]["bleu"]) is float


def test_an_unsafe_value_is_not_called_corrupt(tmp_path):
    import numpy as np

    path = tmp_path / "unsafe.pt"
    torch.save({"format": "transformer-lesson-checkpoint", "loss": np.float64(1.5)}, path)
    with pytest.raises(CheckpointError, match="refuses to read") as failure:
        load_checkpoint(path)
    assert "corrupt" not in str(failure.value) and "Do not delete it" in str(failure.value)


def test_a_run_stopped_by_max_steps_is_still_evaluated():
    evaluate = lambda model: {"calls": 1.0}
    history = make_trainer().fit(epoch_batches, epochs=1, max_steps=3, evaluate=evaluate)
    assert [(e["step"], e["epoch"]) for e in history.evals] == [(3, 0)]
    history = make_trainer().fit(epoch_batches, epochs=1, evaluate=evaluate)  # the epoch's end: once
    assert [e["step"] for e in history.evals] == [7]


def test_logged_learning_rate_is_the_one_the_step_used():
    torch.manual_seed(0)
    model = GRUSeq2Seq(config())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 ** step)
    trainer = Trainer(model, optimizer, "cpu", scheduler=scheduler, progress=False)
    history = trainer.fit(epoch_batches, max_steps=3)
    assert history.learning_rates == pytest.approx([0.1, 0.05, 0.025])


def test_grad_scaler_skips_overflowing_steps_without_stepping_the_scheduler():
    from transformer_lesson.runtime import AmpSettings
    from transformer_lesson.training import seq2seq_loss

    calls = []

    def loss_with_bad_gradients(model, batch):
        """The usual loss, but steps 1 and 3 get NaN gradients (as a float16 overflow would)."""
        loss = seq2seq_loss(model, batch)
        calls.append(1)
        if len(calls) in (1, 3):
            first = next(model.parameters()).flatten()[0]
            loss = loss + (first * 0).sqrt()  # adds 0 to the loss, NaN to the gradient
        return loss

    torch.manual_seed(0)
    model = GRUSeq2Seq(config())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 ** step)
    trainer = Trainer(model, optimizer, "cpu", scheduler=scheduler, progress=False, loss_fn=loss_with_bad_gradients,
                      amp=AmpSettings(dtype=None, use_grad_scaler=True))  # float16's path, on the CPU
    assert trainer.scaler.is_enabled()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "lr_scheduler.step() before optimizer.step()"
        history = trainer.fit(epoch_batches, max_steps=6)
    taken = optimizer.state[next(model.parameters())]["step"]
    assert trainer.skipped_steps == 2 and taken == 4 and scheduler.last_epoch == 4
    assert history.learning_rates == pytest.approx([1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4, 1.25e-4])
    assert trainer.scaler.get_scale() == 2.0**16 / 4


def test_a_checkpoint_is_written_at_every_epoch_end(tmp_path):
    path = tmp_path / "run.pt"
    with pytest.raises(Crash):
        make_trainer(path, every=None).fit(crash_at(epoch_batches, epoch=1, batch=5), epochs=2)
    assert load_checkpoint(path)["step"] == 7  # the end of epoch 0, not nothing
    resumed = make_trainer(path, seed=3, every=None)
    resumed.fit(epoch_batches, epochs=2)
    reference = make_trainer()
    reference.fit(epoch_batches, epochs=2)
    assert_same_run(reference, resumed)


@pytest.fixture
def progress_bars(monkeypatch):
    """The progress bars the Trainer makes, recorded (they still draw, to the captured stderr)."""
    from tqdm.auto import tqdm

    from transformer_lesson import training

    bars = []

    class RecordedBar(tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            bars.append(self)

    monkeypatch.setattr(training, "tqdm", RecordedBar)
    return bars


def test_progress_bar_knows_its_total_in_epoch_mode(progress_bars):
    trainer = make_trainer()
    trainer.progress = True
    trainer.fit(epoch_batches, epochs=2)
    [bar] = progress_bars
    assert (bar.total, bar.n) == (14, 14)  # a disabled bar would not count


def test_a_resumed_progress_bar_counts_from_the_checkpoints_step(tmp_path, progress_bars):
    path = tmp_path / "run.pt"
    with pytest.raises(Crash):
        make_trainer(path).fit(crash_at(epoch_batches, epoch=1, batch=3), epochs=2)  # saved at step 8
    resumed = make_trainer(path)
    resumed.progress = True
    resumed.fit(epoch_batches, epochs=2)
    bar = progress_bars[-1]
    assert (bar.total, bar.n) == (14, 14) and bar.initial == 8


def test_corpus_batches_know_their_number_so_the_bar_has_a_total(progress_bars):
    """``TranslationData.batches`` is an iterator with a length: the lessons' progress bars show a total."""
    from transformer_lesson.batching import TranslationData, token_budget_batches

    pairs = [("a " * (1 + i % 7), "b " * (1 + i % 5)) for i in range(60)]
    tok = _CharTokenizer()
    data = TranslationData(pairs, tok)
    epoch = data.batches(max_tokens=40, seed=3)
    expected = token_budget_batches(data.lengths(), 40, True, 3)
    assert len(epoch) == len(expected) > 1
    first = next(epoch)  # the lessons call next() on it to peek at one batch
    assert len(first) == len(expected[0]) and len(epoch) == len(expected)
    assert 1 + sum(1 for _ in epoch) == len(expected)

    torch.manual_seed(0)
    model = GRUSeq2Seq(config(vocab_size=tok.vocab_size))
    trainer = Trainer(model, torch.optim.Adam(model.parameters()), "cpu", progress=True)
    trainer.fit(lambda e: data.batches(max_tokens=40, seed=e), epochs=2)
    [bar] = progress_bars
    assert bar.total == bar.n == trainer.step == 2 * len(expected)


class _CharTokenizer:
    """Just enough of the course tokenizer for TranslationData: one id per character."""

    vocab_size = 8

    def encode_batch(self, texts, bos=False, eos=False):
        return [[1] * bos + [4 + "ab ".index(c) for c in text] + [2] * eos for text in texts]


def test_distributed_wrapper_is_unwrapped_for_saving_and_evaluation(tmp_path, monkeypatch):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from transformer_lesson import training

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        inner = GRUSeq2Seq(config())
        wrapped = DistributedDataParallel(inner)
        seen = []
        evaluate = lambda model: seen.append(model) or {"ok": 1.0}
        path = tmp_path / "ddp.pt"
        trainer = Trainer(wrapped, torch.optim.Adam(wrapped.parameters(), lr=1e-2), "cpu",
                          checkpoint_path=path, progress=False)
        assert trainer.module is inner and trainer.is_main_process
        trainer.fit(epoch_batches, max_steps=2, evaluate=evaluate)
        assert seen == [inner] and hasattr(seen[0], "start_decoding")
        saved = load_checkpoint(path)["model"]
        assert not any(name.startswith("module.") for name in saved)
        load_checkpoint(path, GRUSeq2Seq(config()))  # an unwrapped model can load it

        monkeypatch.setattr(training, "is_main_process", lambda: False)  # as rank 1 would be
        other = tmp_path / "rank1.pt"
        follower = Trainer(DistributedDataParallel(GRUSeq2Seq(config())), torch.optim.SGD(inner.parameters(), lr=0.1),
                           "cpu", checkpoint_path=other, progress=False)
        history = follower.fit(epoch_batches, max_steps=2, evaluate=evaluate)
        assert not other.exists() and history.evals == [] and len(history.losses) == 2
    finally:
        dist.destroy_process_group()


def test_rng_state_round_trips_for_python_numpy_and_torch():
    import random

    import numpy as np

    from transformer_lesson.checkpoint import get_rng_state, set_rng_state

    state = get_rng_state()
    first = (random.random(), np.random.rand(), np.random.randn(), torch.rand(1).item())
    set_rng_state(state)
    assert (random.random(), np.random.rand(), np.random.randn(), torch.rand(1).item()) == first


class _OnAccelerator(torch.Tensor):
    """Acts like a tensor on a GPU: refuses ``.numpy()`` until moved with ``.cpu()``."""

    def numpy(self, *args, **kwargs):
        raise TypeError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() first.")

    def cpu(self, *args, **kwargs):
        return self.as_subclass(torch.Tensor)


def test_rng_state_loaded_onto_a_gpu_can_be_restored():
    """``Trainer.load`` maps a checkpoint to the training device, random states included."""
    import numpy as np

    from transformer_lesson.checkpoint import get_rng_state, set_rng_state

    state = get_rng_state()
    first = (np.random.rand(), torch.rand(1).item())
    state["numpy"]["keys"] = state["numpy"]["keys"].as_subclass(_OnAccelerator)
    state["torch"] = state["torch"].as_subclass(_OnAccelerator)
    set_rng_state(state)
    assert (np.random.rand(), torch.rand(1).item()) == first


def test_resume_loads_the_checkpoint_on_the_cpu(tmp_path, monkeypatch):
    """Mapped to a GPU, Adam's step counters would make every later step wait for the device."""
    from transformer_lesson import checkpoint

    path = tmp_path / "run.pt"
    make_trainer(path).fit(epoch_batches, max_steps=2)
    seen = []
    real_load = checkpoint.load_checkpoint
    monkeypatch.setattr(checkpoint, "load_checkpoint", lambda *a, **k: seen.append(k.get("map_location")) or
                        real_load(*a, **k))
    resumed = make_trainer(path)
    resumed.fit(epoch_batches, max_steps=3)
    assert seen == ["cpu"] and resumed.step == 3
    assert all(s["step"].device.type == "cpu" for s in resumed.optimizer.state.values())


def test_a_temporary_file_left_by_a_killed_save_is_removed(tmp_path):
    path = tmp_path / "run.pt"
    stale = tmp_path / "run.pt.tmp12345"
    stale.write_bytes(b"half a checkpoint")
    make_trainer(path).fit(epoch_batches, max_steps=1)
    assert path.exists() and not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.pt"]


def test_only_this_processs_gpu_rng_state_is_saved_and_old_lists_still_load(monkeypatch):
    from transformer_lesson.checkpoint import get_rng_state, set_rng_state

    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": torch.tensor([7], dtype=torch.uint8))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": restored.append(state.tolist()))
    state = get_rng_state()
    assert state["cuda"].tolist() == [7]
    set_rng_state(state)
    old_format = {**state, "cuda": [torch.tensor([0], dtype=torch.uint8), torch.tensor([1], dtype=torch.uint8)]}
    set_rng_state(old_format)  # one state per GPU: this process's (GPU 1) is used
    set_rng_state({**state, "cuda": [torch.tensor([0], dtype=torch.uint8)]})  # fewer GPUs then: none to restore
    assert restored == [[7], [1]]


def test_seq2seq_loss_is_the_teacher_forced_sequence_loss_as_one_scalar():
    """The loss a ``loss_fn`` gives the Trainer: one scalar tensor, left on the device (no .item())."""
    from transformer_lesson.training import seq2seq_loss

    torch.manual_seed(0)
    batch = toy_batch("reverse", 4, 3, 6, 8, torch.Generator().manual_seed(0))
    model = GRUSeq2Seq(config()).eval()
    loss = seq2seq_loss(model, batch)
    assert isinstance(loss, torch.Tensor) and loss.shape == () and loss.requires_grad
    expected = sequence_loss(model(batch.src, batch.src_mask, batch.tgt_in), batch.tgt_out, batch.tgt_mask)
    torch.testing.assert_close(loss, expected)


def test_resuming_in_another_precision_says_so_and_keeps_the_skipped_steps(tmp_path, capsys):
    """A Colab run saved on an L4 (bfloat16) and resumed on a T4 (float16), say, here on the CPU."""
    from transformer_lesson.runtime import AmpSettings

    path = tmp_path / "run.pt"
    torch.manual_seed(0)
    model = GRUSeq2Seq(config())
    bf16 = Trainer(model, torch.optim.Adam(model.parameters()), "cpu", checkpoint_path=path, progress=False,
                   amp=AmpSettings(dtype=torch.bfloat16, use_grad_scaler=False))
    bf16.skipped_steps = 3  # as if some earlier float16 steps had overflowed
    bf16.fit(epoch_batches, max_steps=2)
    capsys.readouterr()
    resumed = Trainer(model, torch.optim.Adam(model.parameters()), "cpu", checkpoint_path=path, progress=False,
                      amp=AmpSettings(dtype=None, use_grad_scaler=True))
    resumed.fit(epoch_batches, max_steps=3)
    assert "trained in bfloat16 mixed precision; this device continues in float32 (a new loss scale" in \
        capsys.readouterr().out
    assert resumed.skipped_steps == 3
    same = Trainer(model, torch.optim.Adam(model.parameters()), "cpu", checkpoint_path=path, progress=False,
                   amp=AmpSettings(dtype=None, use_grad_scaler=True))
    same.fit(epoch_batches, max_steps=4)
    assert "mixed precision" not in capsys.readouterr().out


def test_a_list_of_batches_is_one_step_on_their_mean_gradient():
    """Gradient accumulation: one step on [b1, b2] = one step on the mean of their losses' gradients."""
    batches = epoch_batches(0, n=2)
    accumulated, reference = make_trainer(), make_trainer()
    for trainer in (accumulated, reference):
        trainer.model.eval()  # no dropout: the two must see the same function
    loss, _ = accumulated.train_step(batches)
    losses = [F.cross_entropy(reference.model(b.src, b.src_mask, b.tgt_in)[b.tgt_mask], b.tgt_out[b.tgt_mask])
              for b in batches]
    reference.optimizer.zero_grad()
    (sum(losses) / 2).backward()
    torch.nn.utils.clip_grad_norm_(reference.model.parameters(), 1.0)
    reference.optimizer.step()
    assert loss == pytest.approx(sum(x.item() for x in losses) / 2, rel=1e-6)
    for a, b in zip(accumulated.model.parameters(), reference.model.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    assert accumulated.target_tokens == sum(b.n_target_tokens for b in batches)


def test_history_counts_time_tokens_and_waiting():
    trainer = make_trainer()
    history = trainer.fit(epoch_batches, max_steps=5)
    assert len(history.seconds) == len(history.target_tokens) == 5
    assert history.target_tokens[-1] == sum(b.n_target_tokens for b in epoch_batches(0)[:5])
    assert all(b >= a for a, b in zip(history.seconds, history.seconds[1:], strict=False))  # running totals
    speed = history.throughput()
    assert speed["target_tokens_per_second"] > 0 and 0 <= speed["data_wait_share"] < 1


def test_a_compiled_model_is_unwrapped_for_saving(tmp_path):
    from transformer_lesson.runtime import unwrap

    model = GRUSeq2Seq(config())
    compiled = torch.compile(model, backend="eager")
    assert unwrap(compiled) is model
    save_checkpoint(tmp_path / "c.pt", compiled)
    assert load_checkpoint(tmp_path / "c.pt")["model"].keys() == model.state_dict().keys()  # no _orig_mod.
