"""The Transformer of lessons 07-08: same numbers as PyTorch's, causal, blind to padding, cached decoding, learns."""

import time

import pytest
import torch
from torch import nn

from transformer_lesson.attention import causal_mask
from transformer_lesson.decoding import greedy_decode, reorder_state
from transformer_lesson.evaluation import exact_match
from transformer_lesson.runtime import seed_everything
from transformer_lesson.schedule import warmup_linear_decay
from transformer_lesson.toy import (
    histogram_batch,
    tagging_accuracy,
    tagging_loss,
    toy_batch,
    toy_vocab_size,
)
from transformer_lesson.training import Trainer
from transformer_lesson.transformer import EncoderTagger, Transformer, TransformerConfig

BOTH_NORMS = pytest.mark.parametrize("norm_first", [True, False], ids=["pre-norm", "post-norm"])


def small(**overrides) -> TransformerConfig:
    settings = dict(src_vocab_size=20, d_model=16, n_heads=4, n_encoder_layers=2, n_decoder_layers=2, d_ff=32,
                    dropout=0.0, max_len=40)
    return TransformerConfig(**{**settings, **overrides})


def source_batch(generator, batch=3, length=7, vocab=20):
    src = torch.randint(4, vocab, (batch, length), generator=generator)
    real = torch.ones(batch, length, dtype=torch.bool)
    real[1, length - 2:] = False  # sentence 1 has two pads
    real[-1, 3:] = False
    return src.masked_fill(~real, 0), real


@BOTH_NORMS
@pytest.mark.filterwarnings("ignore:enable_nested_tensor is True")  # PyTorch's note about its own fast path
def test_same_outputs_as_torch_nn_transformer(norm_first):
    torch.manual_seed(0)
    theirs = nn.Transformer(16, 4, 2, 2, 32, dropout=0.0, batch_first=True, norm_first=norm_first).double().eval()
    ours = Transformer(small(norm_first=norm_first, final_norm=True)).double().eval().load_from_torch(theirs)
    src, tgt = torch.randn(3, 7, 16, dtype=torch.float64), torch.randn(3, 5, 16, dtype=torch.float64)
    real = torch.ones(3, 7, dtype=torch.bool)
    real[1, 5:] = False
    memory, _ = ours.encoder(src, real)
    expected_memory = theirs.encoder(src, src_key_padding_mask=~real)  # PyTorch's masks: True = blocked
    torch.testing.assert_close(memory[real], expected_memory[real], rtol=1e-10, atol=1e-10)
    decoded, _, _ = ours.decoder(tgt, memory, real)
    expected = theirs.decoder(tgt, expected_memory, tgt_mask=~causal_mask(5), memory_key_padding_mask=~real)
    torch.testing.assert_close(decoded, expected, rtol=1e-10, atol=1e-10)


def test_loading_a_torch_transformer_of_another_shape_says_what_differs():
    theirs = nn.Transformer(16, 4, 2, 2, 32, batch_first=True)
    with pytest.raises(ValueError, match="norm_first: torch False, ours True"):
        Transformer(small(final_norm=True)).load_from_torch(theirs)
    with pytest.raises(ValueError, match="encoder.norm.weight: only in torch"):
        Transformer(small(norm_first=False)).load_from_torch(theirs)
    with pytest.raises(ValueError, match=r"linear1.weight: torch \(32, 16\), ours \(64, 16\)"):
        Transformer(small(norm_first=False, final_norm=True, d_ff=64)).load_from_torch(theirs)


@BOTH_NORMS
def test_cached_decoding_gives_the_teacher_forced_logits(norm_first):
    generator = torch.Generator().manual_seed(1)
    model = Transformer(small(norm_first=norm_first)).double().eval()
    src, real = source_batch(generator)
    tgt_in = torch.randint(4, 20, (3, 6), generator=generator)
    expected = model(src, real, tgt_in)  # (B, T, V)
    state = model.start_decoding(src, real)
    steps = []
    for t in range(tgt_in.shape[1]):
        logits, state = model.decode_step(state, tgt_in[:, t])
        steps.append(logits)
        assert state["self_keys.0"].shape == (3, 4, t + 1, 4)  # the cache grows by one position per step
    torch.testing.assert_close(torch.stack(steps, dim=1), expected, rtol=1e-10, atol=1e-10)


def test_decoding_state_is_batch_first_so_beam_search_can_reorder_it():
    generator = torch.Generator().manual_seed(2)
    model = Transformer(small()).double().eval()
    src, real = source_batch(generator)
    state = model.start_decoding(src, real)
    _, state = model.decode_step(state, torch.tensor([1, 1, 1]))
    order = torch.tensor([2, 0, 0])
    reordered = reorder_state(state, order)
    next_tokens = torch.tensor([5, 6, 7])
    logits, _ = model.decode_step(reordered, next_tokens)
    alone, _ = model.decode_step(model.decode_step(model.start_decoding(src[order], real[order]),
                                                   torch.tensor([1, 1, 1]))[1], next_tokens)
    torch.testing.assert_close(logits, alone, rtol=1e-10, atol=1e-10)


@BOTH_NORMS
def test_a_future_target_token_never_changes_an_earlier_output(norm_first):
    generator = torch.Generator().manual_seed(3)
    model = Transformer(small(norm_first=norm_first)).double().eval()
    src, real = source_batch(generator)
    tgt_in = torch.randint(4, 20, (3, 6), generator=generator)
    before = model(src, real, tgt_in)
    changed = tgt_in.clone()
    changed[:, 4] = (changed[:, 4] + 1 - 4) % 16 + 4  # another token at position 4
    after = model(src, real, changed)
    torch.testing.assert_close(after[:, :4], before[:, :4], rtol=0, atol=1e-12)
    assert (after[:, 4:] - before[:, 4:]).abs().max() > 1e-3  # ... but does change it and the later ones


@BOTH_NORMS
def test_padding_never_changes_the_outputs_at_real_positions(norm_first):
    generator = torch.Generator().manual_seed(4)
    model = Transformer(small(norm_first=norm_first)).double().eval()
    src, real = source_batch(generator)
    tgt_in = torch.randint(4, 20, (3, 5), generator=generator)
    logits = model(src, real, tgt_in)
    memory = model.encode(src, real)
    # other ids at the pads, and three more pads at the end
    garbage = torch.randint(4, 20, src.shape, generator=generator)
    longer_src = torch.cat([torch.where(real, src, garbage), torch.full((3, 3), 7)], dim=1)
    longer_real = torch.cat([real, torch.zeros(3, 3, dtype=torch.bool)], dim=1)
    torch.testing.assert_close(model(longer_src, longer_real, tgt_in), logits, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(model.encode(longer_src, longer_real)[:, :7][real], memory[real],
                               rtol=1e-10, atol=1e-10)


def test_fast_and_teaching_attention_paths_agree_and_weights_are_distributions():
    generator = torch.Generator().manual_seed(5)
    model = Transformer(small(n_decoder_layers=3)).double().eval()
    src, real = source_batch(generator)
    tgt_in = torch.randint(4, 20, (3, 5), generator=generator)
    fast = model(src, real, tgt_in)
    model.set_fast_attention(False)
    assert all(not m.fast for m in model.modules() if hasattr(m, "fast"))
    torch.testing.assert_close(model(src, real, tgt_in), fast, rtol=1e-10, atol=1e-10)
    weights = model.attention_weights(src, real, tgt_in)
    assert weights["encoder"].shape == (2, 3, 4, 7, 7)
    assert weights["decoder_self"].shape == (3, 3, 4, 5, 5)
    assert weights["cross"].shape == (3, 3, 4, 5, 7)
    torch.testing.assert_close(weights["cross"].sum(-1), torch.ones(3, 3, 4, 5, dtype=torch.float64))
    assert weights["cross"][:, 2, :, :, 3:].abs().max() == 0  # no weight on sentence 2's pads
    assert torch.triu(weights["decoder_self"], diagonal=1).abs().max() == 0  # none on the future


def test_the_encoder_keeps_every_position_and_the_width():
    model = Transformer(small()).eval()
    src, real = source_batch(torch.Generator().manual_seed(6), batch=3, length=9)
    assert model.encode(src, real).shape == (3, 9, 16)  # as many positions as tokens, d_model wide


def test_dropout_only_in_training_mode():
    generator = torch.Generator().manual_seed(7)
    model = Transformer(small(dropout=0.3))
    src, real = source_batch(generator)
    tgt_in = torch.randint(4, 20, (3, 5), generator=generator)
    model.train()
    assert not torch.equal(model(src, real, tgt_in), model(src, real, tgt_in))
    model.eval()
    assert torch.equal(model(src, real, tgt_in), model(src, real, tgt_in))


def test_tied_embeddings_are_one_matrix_and_save_two_vocabulary_tables():
    tied, untied = Transformer(small()), Transformer(small(tie_embeddings=False))
    assert tied.output.weight is tied.src_embedding.weight is tied.tgt_embedding.weight
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731 (parameters() counts a shared one once)
    assert count(untied) - count(tied) == 2 * 20 * 16
    with torch.no_grad():
        tied.src_embedding.weight[5] += 1.0
    assert torch.equal(tied.output.weight[5], tied.tgt_embedding.weight[5])


def test_untied_vocabularies_may_differ():
    model = Transformer(small(tie_embeddings=False, tgt_vocab_size=11))
    src, real = source_batch(torch.Generator().manual_seed(8))
    assert model(src, real, torch.randint(0, 11, (3, 4))).shape == (3, 4, 11)


@pytest.mark.parametrize(("overrides", "message"), [
    (dict(n_heads=3), "not divisible by n_heads=3"),
    (dict(tgt_vocab_size=30), "tie_embeddings=True shares one embedding matrix"),
    (dict(dropout=1.0), "dropout must be in"),
    (dict(activation="tanh"), "activation must be one of"),
    (dict(positional="rotary"), "positional must be"),
    (dict(d_model=0), "d_model must be a positive int"),
])
def test_bad_configs_say_what_to_change(overrides, message):
    with pytest.raises(ValueError, match=message):
        small(**overrides)


def test_bad_inputs_say_what_to_change():
    model = Transformer(small(max_len=8)).eval()
    src, real = source_batch(torch.Generator().manual_seed(9))
    tgt = torch.randint(4, 20, (3, 5))
    with pytest.raises(ValueError, match="tgt_in has 9 positions, but the positional table covers 8"):
        model(src, real, torch.randint(4, 20, (3, 9)))
    with pytest.raises(ValueError, match="vocabulary has ids 0 .. 19"):
        model(src, real, torch.full((3, 5), 20))
    with pytest.raises(TypeError, match="integer token ids"):
        model(src.float(), real, tgt)
    with pytest.raises(ValueError, match="add a batch dimension"):
        model(src[0], real[0], tgt)
    with pytest.raises(ValueError, match="src_mask must be a boolean tensor of src's shape"):
        model(src, real[:, :5], tgt)
    with pytest.raises(ValueError, match="src_mask must be a boolean tensor"):
        model(src, real.long(), tgt)
    with pytest.raises(ValueError, match="batch size 3 .* tgt_in has 2"):
        model(src, real, tgt[:2])
    with pytest.raises(ValueError, match="src is on meta but the model is on cpu"):
        model(src.to("meta"), real, tgt)
    with pytest.raises(ValueError, match=r"last_tokens has shape \(3, 1\)"):
        model.decode_step(model.start_decoding(src, real), torch.ones(3, 1, dtype=torch.long))


def test_rebuilds_from_its_plain_config():
    model = Transformer(small(norm_first=False))
    from dataclasses import asdict
    again = Transformer.from_config(asdict(model.config))
    assert again.config == model.config
    with pytest.raises(ValueError, match="Not TransformerConfig fields"):
        Transformer.from_config({**asdict(model.config), "d_hidden": 5})


def test_learns_to_reverse_to_99_percent_exact_match_in_under_two_minutes(one_thread):
    """The lesson 08 claim, on one CPU thread: 600 steps of 64 sequences (lengths 3-10, 10 symbols)."""
    seed_everything(0)
    config = TransformerConfig(src_vocab_size=toy_vocab_size(10), d_model=64, n_heads=4, n_encoder_layers=2,
                               n_decoder_layers=2, d_ff=128, dropout=0.0, max_len=32)
    model = Transformer(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    steps, data = 600, torch.Generator().manual_seed(1)
    trainer = Trainer(model, optimizer, "cpu", scheduler=warmup_linear_decay(optimizer, 100, steps), progress=False)
    start = time.perf_counter()
    trainer.fit(lambda epoch: (toy_batch("reverse", 64, 3, 10, 10, data) for _ in range(steps)), epochs=1)
    seconds = time.perf_counter() - start
    test = toy_batch("reverse", 500, 3, 10, 10, torch.Generator().manual_seed(99))
    assert exact_match(model, test) >= 0.99
    assert seconds < 120
    # greedy_decode works on it unchanged, and stops each sentence at its own <eos>
    hypotheses = greedy_decode(model, test.src[:5], test.src_mask[:5], max_len=20)
    assert [len(h) for h in hypotheses] == test.src_mask[:5].sum(1).tolist()


def test_an_encoder_alone_learns_the_histogram_task_to_99_percent(one_thread):
    seed_everything(0)
    config = TransformerConfig(src_vocab_size=toy_vocab_size(8), d_model=64, n_heads=4, n_encoder_layers=2,
                               n_decoder_layers=0, d_ff=128, dropout=0.0, max_len=32)
    model = EncoderTagger(config, n_classes=13)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    steps, data = 600, torch.Generator().manual_seed(1)
    trainer = Trainer(model, optimizer, "cpu", scheduler=warmup_linear_decay(optimizer, 100, steps),
                      loss_fn=tagging_loss, progress=False)
    trainer.fit(lambda epoch: (histogram_batch(64, generator=data) for _ in range(steps)), epochs=1)
    test = histogram_batch(1000, generator=torch.Generator().manual_seed(99))
    assert tagging_accuracy(model, test) >= 0.99
    _, weights = model(test.tokens[:2], test.mask[:2], need_weights=True)
    assert weights.shape == (2, 2, 4, test.tokens.shape[1], test.tokens.shape[1])  # (layers, B, heads, T, T)


def test_histogram_labels_count_each_symbol():
    batch = histogram_batch(50, generator=torch.Generator().manual_seed(0))
    for tokens, mask, labels in zip(batch.tokens, batch.mask, batch.labels, strict=True):
        assert tokens[0] == 1 and labels[0] == -100  # <bos>, not labelled
        symbols = tokens[1:][mask[1:]].tolist()
        assert labels[1:][mask[1:]].tolist() == [symbols.count(s) for s in symbols]
        assert (labels[~mask] == -100).all() and (tokens[~mask] == 0).all()


def test_rebuilds_from_a_checkpoint_alone(tmp_path):
    from transformer_lesson.checkpoint import CheckpointError, save_checkpoint

    model = Transformer(small(norm_first=False, tie_embeddings=False, tgt_vocab_size=11)).eval()
    path = save_checkpoint(tmp_path / "model.pt", model)
    again = Transformer.from_checkpoint(path).eval()
    assert again.config == model.config
    src, real = source_batch(torch.Generator().manual_seed(10))
    tgt = torch.randint(0, 11, (3, 4))
    assert torch.equal(again(src, real, tgt), model(src, real, tgt))
    bare = save_checkpoint(tmp_path / "tagger.pt", nn.Linear(2, 2))  # a model without a config
    with pytest.raises(CheckpointError, match="holds no model config"):
        Transformer.from_checkpoint(bare)


def test_translate_and_bleu_work_on_it_unchanged():
    from transformer_lesson.evaluation import evaluate_bleu, translate
    from transformer_lesson.tokenizer import multi30k_tokenizer

    tokenizer = multi30k_tokenizer(8000)
    seed_everything(0)
    model = Transformer(small(src_vocab_size=tokenizer.vocab_size, max_len=64)).eval()
    out = translate(model, tokenizer, ["Ein Hund läuft.", "Zwei Männer spielen Fußball im Park."], "cpu", max_len=6)
    assert len(out) == 2 and all(isinstance(s, str) for s in out)
    report = evaluate_bleu(model, tokenizer, [("Ein Hund.", "A dog.")], "cpu")
    assert 0.0 <= report.bleu.score <= 100.0


def test_translate_stays_within_the_positional_table(monkeypatch):
    from transformer_lesson import evaluation
    from transformer_lesson.tokenizer import multi30k_tokenizer

    calls = []

    def spy(model, src, src_mask, max_len, **kwargs):
        calls.append((src.shape[1], max_len))
        return greedy_decode(model, src, src_mask, max_len, **kwargs)

    monkeypatch.setattr(evaluation, "greedy_decode", spy)
    tokenizer = multi30k_tokenizer(8000)
    model = Transformer(small(src_vocab_size=tokenizer.vocab_size, max_len=12)).eval()
    with pytest.warns(UserWarning, match="truncated to their first 12 tokens"):
        (out,) = evaluation.translate(model, tokenizer, ["Zwei Männer spielen im Park mit einem Ball. " * 3], "cpu")
    assert isinstance(out, str) and calls == [(12, 12)]  # 12 source tokens, at most 12 decoding steps
