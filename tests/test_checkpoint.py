"""Checkpoints on their own: the model's config stored beside its weights, old versions, clear errors.

The Trainer's use of checkpoints (exact resume, refusing a changed run config) is tested in
test_training.py.
"""

import dataclasses

import pytest
import torch
from test_training import assert_same_run, config, epoch_batches, make_trainer
from torch import nn

from transformer_lesson.checkpoint import (
    CHECKPOINT_VERSION,
    CheckpointError,
    average_weights,
    check_state_dict_fits,
    load_checkpoint,
    read_model_config,
    save_checkpoint,
    this_process_rng_state,
)
from transformer_lesson.rnn_attention import AttentionGRUSeq2Seq
from transformer_lesson.seq2seq import GRUSeq2Seq, Seq2SeqConfig


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    yield


def test_the_models_config_is_stored_so_the_model_can_be_rebuilt_from_the_file_alone(tmp_path):
    torch.manual_seed(0)
    model = GRUSeq2Seq(config(vocab_size=20))
    path = save_checkpoint(tmp_path / "model.pt", model, config={"lr": 1e-3})
    payload = torch.load(path, weights_only=True)
    assert payload["version"] == CHECKPOINT_VERSION == 3 and "model_class" not in payload
    assert payload["model_config"] == dataclasses.asdict(config(vocab_size=20))
    rebuilt = GRUSeq2Seq(Seq2SeqConfig(**read_model_config(path)))
    load_checkpoint(path, rebuilt)
    for (name, a), b in zip(model.state_dict().items(), rebuilt.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_a_model_config_can_be_given_and_models_without_one_store_none(tmp_path):
    linear = nn.Linear(3, 2)
    bare = save_checkpoint(tmp_path / "bare.pt", linear)
    assert torch.load(bare, weights_only=True)["model_config"] is None
    with pytest.raises(CheckpointError, match="holds no model config"):
        read_model_config(bare)
    given = save_checkpoint(tmp_path / "given.pt", linear, model_config={"in_features": 3, "out_features": 2})
    assert read_model_config(given) == {"in_features": 3, "out_features": 2}
    wrapped = save_checkpoint(tmp_path / "wrapped.pt", nn.DataParallel(GRUSeq2Seq(config())))
    assert read_model_config(wrapped)["vocab_size"] == 12  # the config of the model inside the wrapper


def test_the_trainer_stores_the_models_config_without_being_told(tmp_path):
    path = tmp_path / "run.pt"
    make_trainer(path).fit(epoch_batches, max_steps=2)
    payload = load_checkpoint(path)
    assert payload["model_config"] == dataclasses.asdict(config()) and payload["config"] == {"run": "test"}


def test_a_misfit_names_the_differing_settings_and_how_to_rebuild(tmp_path):
    path = save_checkpoint(tmp_path / "run.pt", GRUSeq2Seq(config(vocab_size=8000, d_hidden=32)))
    with pytest.raises(CheckpointError) as failure:
        load_checkpoint(path, GRUSeq2Seq(config()))
    message = str(failure.value)
    assert "d_hidden: 32 in the checkpoint, 16 in this model" in message
    assert "vocab_size: 8000 in the checkpoint, 12 in this model" in message
    assert "dropout" not in message  # only the settings that differ
    assert f"Seq2SeqConfig(**read_model_config({str(path)!r}))" in message
    assert f"delete {path} to train afresh" in message
    assert "embedding" not in message.split("problem(s)")[0]  # no guessing from parameter names

    same_settings = AttentionGRUSeq2Seq(config(vocab_size=8000, d_hidden=32))  # another kind of model
    with pytest.raises(CheckpointError, match="in the model but not in the checkpoint") as failure:
        load_checkpoint(path, same_settings)
    assert "differs" not in str(failure.value) and "same kind of model" in str(failure.value)


def test_a_misfit_without_a_stored_model_config_still_says_how_to_fix_it():
    model = GRUSeq2Seq(config())
    state = GRUSeq2Seq(config(vocab_size=20)).state_dict()
    with pytest.raises(CheckpointError, match=r"(?s)decoder.out.weight.*checkpoint\['config'\].*delete the "
                                              r"checkpoint file to train afresh"):
        check_state_dict_fits(model, state)


def test_a_version_2_checkpoint_without_a_model_config_loads_and_resumes_exactly(tmp_path):
    reference = make_trainer()
    reference.fit(epoch_batches, max_steps=5)
    path = tmp_path / "run.pt"
    make_trainer(path).fit(epoch_batches, max_steps=3)
    payload = torch.load(path, weights_only=True)
    version_2 = {k: v for k, v in payload.items() if k != "model_config"}
    torch.save({**version_2, "version": 2, "model_class": "GRUSeq2Seq"}, path)  # as version 2 wrote it
    with pytest.raises(CheckpointError, match="format version 2"):
        read_model_config(path)
    resumed = make_trainer(path, seed=7)
    resumed.fit(epoch_batches, max_steps=5)
    assert_same_run(reference, resumed)


def test_a_newer_version_is_refused(tmp_path):
    path = save_checkpoint(tmp_path / "run.pt", nn.Linear(2, 2))
    torch.save({**torch.load(path, weights_only=True), "version": CHECKPOINT_VERSION + 1}, path)
    with pytest.raises(CheckpointError, match="newer version"):
        load_checkpoint(path)


def test_this_processs_random_state_is_picked_from_either_format():
    one, two = {"torch": torch.tensor([1])}, {"torch": torch.tensor([2])}
    assert this_process_rng_state([one]) is one  # version 2 on: one state per process, in rank order
    assert this_process_rng_state(one) is one  # version 1: this process's state
    assert this_process_rng_state([one, two]) is None  # written by two processes, read by one


def test_a_flipped_byte_inside_a_weight_is_refused(tmp_path):
    """The weights carry a SHA-256: a damaged file does not load wrong numbers silently."""
    save_checkpoint(tmp_path / "ok.pt", nn.Linear(4, 3))
    payload = torch.load(tmp_path / "ok.pt", weights_only=True)
    payload["model"]["weight"][1, 2] += 1e-3  # what a flipped bit in the stored numbers does
    torch.save(payload, tmp_path / "damaged.pt")
    load_checkpoint(tmp_path / "ok.pt", nn.Linear(4, 3))
    with pytest.raises(CheckpointError, match="damaged"):
        load_checkpoint(tmp_path / "damaged.pt", nn.Linear(4, 3))


def test_a_checkpoint_holds_only_what_older_weights_only_loaders_accept(tmp_path):
    """No pickled ``bytes`` (torch < 2.5's weights-only loader refuses them): the tokenizer is a uint8
    tensor, and it comes back as the same tokenizer."""
    from transformer_lesson.checkpoint import tokenizer_of
    from transformer_lesson.tokenizer import train_tokenizer

    tokenizer = train_tokenizer([f"Ein Hund läuft {i} Mal über die Wiese." for i in range(200)], 300, use_cache=False)
    save_checkpoint(tmp_path / "c.pt", nn.Linear(4, 3), tokenizer=tokenizer)
    payload = torch.load(tmp_path / "c.pt", weights_only=True)

    def walk(value):
        if isinstance(value, dict):
            for item in value.values():
                yield from walk(item)
        elif isinstance(value, list | tuple):
            for item in value:
                yield from walk(item)
        else:
            yield value

    assert not [v for v in walk(payload) if isinstance(v, bytes | bytearray)]
    assert tokenizer_of(payload, tmp_path / "c.pt").model_proto == tokenizer.model_proto


def test_averaged_weights_are_the_mean_of_the_checkpoints(tmp_path):
    torch.manual_seed(0)
    models = [nn.Sequential(nn.Linear(3, 2), nn.LayerNorm(2)) for _ in range(3)]
    for i, model in enumerate(models):
        model.register_buffer("steps", torch.tensor([7]))  # an integer buffer: equal everywhere, kept
        save_checkpoint(tmp_path / f"{i}.pt", model, step=i)
    average = average_weights([tmp_path / f"{i}.pt" for i in range(3)])
    for name, tensor in models[0].state_dict().items():
        expected = sum(m.state_dict()[name] for m in models) / 3 if tensor.is_floating_point() else tensor
        torch.testing.assert_close(average[name], expected)
        assert average[name].dtype == tensor.dtype
    assert not torch.equal(average["0.weight"], models[0].state_dict()["0.weight"])


def test_averaging_checkpoints_of_different_models_is_refused(tmp_path):
    save_checkpoint(tmp_path / "a.pt", nn.Linear(3, 2))
    save_checkpoint(tmp_path / "b.pt", nn.Linear(4, 2))
    with pytest.raises(CheckpointError, match="only checkpoints of one run can be averaged"):
        average_weights([tmp_path / "a.pt", tmp_path / "b.pt"])
    with pytest.raises(ValueError, match="at least one"):
        average_weights([])
