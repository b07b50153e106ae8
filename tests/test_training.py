"""The shared training loop: the masked loss, clipping, checkpoints, and exact resume."""

import pytest
import torch
import torch.nn.functional as F

from transformer_lesson.rnn_attention import AttentionGRUSeq2Seq
from transformer_lesson.seq2seq import GRUSeq2Seq, Seq2SeqConfig
from transformer_lesson.toy import toy_batch
from transformer_lesson.training import (
    CheckpointError,
    History,
    Trainer,
    load_checkpoint,
    save_checkpoint,
    sequence_loss,
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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

    class Crash(Exception):
        pass

    def crashing(epoch):
        for i, batch in enumerate(epoch_batches(epoch)):
            if epoch == 1 and i == 3:  # global step 10; the last checkpoint was at step 8
                raise Crash
            yield batch

    path = tmp_path / "run.pt"
    interrupted = make_trainer(path)
    with pytest.raises(Crash):
        interrupted.fit(crashing, epochs=3)
    assert load_checkpoint(path)["step"] == 8
    resumed = make_trainer(path, seed=123)  # a fresh process: different initial weights
    history = resumed.fit(epoch_batches, epochs=3)
    assert_same_run(reference, resumed)
    assert torch.equal(torch.get_rng_state(), reference_rng)
    assert len(history.losses) == 21 and history.steps == list(range(1, 22))


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
    fig = again.plot("toy")
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["toy: loss", "toy: evaluation"] and all(ax.get_xlabel() for ax in fig.axes)
