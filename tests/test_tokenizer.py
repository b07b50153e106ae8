import pytest

from transformer_lesson import tokenizer as tk
from transformer_lesson.data import load_multi30k


@pytest.fixture(scope="module")
def tok():
    return tk.multi30k_tokenizer(2000)


def test_special_ids_and_size(tok):
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id) == (0, 1, 2, 3)
    assert [tok.id_to_piece(i) for i in range(4)] == list(tk.SPECIAL_TOKENS)
    assert len(tok) == 2000


def test_round_trip_on_real_sentences(tok):
    pairs = load_multi30k("val")
    for sentence in [p.src for p in pairs[:200]] + [p.tgt for p in pairs[:200]]:
        assert tok.decode(tok.encode(sentence)) == sentence


def test_unknown_characters_round_trip_through_bytes(tok):
    text = "Ein Radfahrer 🚲 in Москва — naïve café"
    ids = tok.encode(text)
    assert tk.UNK_ID not in ids
    assert tok.decode(ids) == text


def test_subwords_are_shorter_than_characters(tok):
    sentence = load_multi30k("test")[0].tgt
    assert 1 < len(tok.encode(sentence)) < len(sentence) / 2


def test_decode_drops_specials_and_stops_at_eos(tok):
    ids = tok.encode("A dog runs.", bos=True, eos=True)
    assert ids[0] == tk.BOS_ID and ids[-1] == tk.EOS_ID
    assert tok.decode(ids + tok.encode("garbage") + [tk.PAD_ID] * 3) == "A dog runs."


def test_training_is_cached_and_deterministic(tmp_path, monkeypatch):
    monkeypatch.setenv(tk.CACHE_ENV, str(tmp_path))
    texts = [p.tgt for p in load_multi30k("val")]
    first = tk.train_tokenizer(texts, 400)
    assert len(list(tmp_path.glob("spm-*.model"))) == 1
    second = tk.train_tokenizer(texts, 400)
    fresh = tk.train_tokenizer(texts, 400, use_cache=False)
    assert first.fingerprint == second.fingerprint == fresh.fingerprint
    other = tk.train_tokenizer(texts[:-1], 400)
    assert other.fingerprint != first.fingerprint  # different text, different model file
    assert len(list(tmp_path.glob("spm-*.model"))) == 2


def test_save_and_load(tmp_path, tok):
    tok.save(tmp_path / "t.model")
    again = tk.Tokenizer.load(tmp_path / "t.model")
    assert again.fingerprint == tok.fingerprint
    assert again.encode("Zwei Hunde") == tok.encode("Zwei Hunde")


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="too small"):
        tk.train_tokenizer(["a b c"], 100)
    with pytest.raises(ValueError, match="no text"):
        tk.train_tokenizer([], 1000)


def test_a_damaged_cache_file_is_retrained(tmp_path, monkeypatch):
    monkeypatch.setenv(tk.CACHE_ENV, str(tmp_path / "new"))
    texts = [p.tgt for p in load_multi30k("val")]
    good = tk.train_tokenizer(texts, 400)
    (cached,) = (tmp_path / "new").glob("spm-*.model")
    cached.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="unreadable cached tokenizer"):
        again = tk.train_tokenizer(texts, 400)
    assert again.fingerprint == good.fingerprint
    assert tk.Tokenizer.load(cached).fingerprint == good.fingerprint  # the cache was repaired


def test_one_string_and_a_list_of_strings_are_not_confused():
    tok = tk.multi30k_tokenizer(2000)
    with pytest.raises(TypeError, match="use encode_batch"):
        tok.encode(["Ein Hund.", "Eine Katze."])
    with pytest.raises(TypeError, match="got one string"):
        tok.encode_batch("Ein Hund.")
    with pytest.raises(TypeError, match="item 1 is a int"):
        tok.encode_batch(["Ein Hund.", 3])
