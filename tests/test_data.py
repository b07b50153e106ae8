import gzip
import hashlib
from pathlib import Path

import pytest

from transformer_lesson import data
from transformer_lesson.data import CorpusError, load_multi30k, normalize


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_shipped_splits_have_the_published_sizes(split):
    pairs = load_multi30k(split)
    assert len(pairs) == data.MULTI30K_SIZES[split]
    assert all(p.src and p.tgt for p in pairs)


def test_first_pairs_are_aligned_german_english():
    first = load_multi30k("train")[0]
    assert first.src.startswith("Zwei junge weiße Männer")
    assert first.tgt.startswith("Two young, White males")
    assert load_multi30k("test", limit=7) == load_multi30k("test")[:7]


def test_known_noise_is_cleaned_in_the_loaded_corpus():
    pairs = load_multi30k("train")
    text = "\n".join(p.src + "\n" + p.tgt for p in pairs)
    assert "&amp;" not in text and "\u00a0" not in text
    assert all(s == s.strip() and "  " not in s for p in pairs for s in p)
    assert " 're " not in text  # pre-tokenised contractions joined
    assert sum("&" in p.tgt for p in pairs) >= 10  # the entities became real ampersands


def test_normalize_cases():
    assert normalize("Tom &amp; Jerry\u00a0 run ") == "Tom & Jerry run"
    assert normalize("they 're here", "en") == "they're here"
    assert normalize("they 're here", "de") == "they 're here"
    assert normalize("soft\u00adhyphen\u200b") == "softhyphen"
    assert normalize("u\u0308ber") == "über"  # NFC: one code point


def test_unknown_split_is_an_error():
    with pytest.raises(ValueError, match="Unknown split"):
        load_multi30k("dev")


def _write_corpus(folder: Path, de_lines: bytes, en_lines: bytes) -> None:
    for lang, content in (("de", de_lines), ("en", en_lines)):
        (folder / f"val.{lang}.gz").write_bytes(gzip.compress(content))
    sums = "".join(
        f"{hashlib.sha256((folder / f'val.{lang}.gz').read_bytes()).hexdigest()}  val.{lang}.gz\n"
        for lang in ("de", "en")
    )
    (folder / "SHA256SUMS").write_text(sums)


def test_a_good_small_corpus_loads(tmp_path):
    _write_corpus(tmp_path, b"Ein Hund.\nZwei Katzen.\n", b"A dog.\nTwo cats.\n")
    assert load_multi30k("val", folder=tmp_path) == [("Ein Hund.", "A dog."), ("Zwei Katzen.", "Two cats.")]


def test_missing_file(tmp_path):
    _write_corpus(tmp_path, b"Ein Hund.\n", b"A dog.\n")
    (tmp_path / "val.en.gz").unlink()
    with pytest.raises(CorpusError, match="val.en.gz is missing"):
        load_multi30k("val", folder=tmp_path)


def test_checksum_mismatch(tmp_path):
    _write_corpus(tmp_path, b"Ein Hund.\n", b"A dog.\n")
    (tmp_path / "val.de.gz").write_bytes(gzip.compress(b"Ein Hund!\n"))
    with pytest.raises(CorpusError, match="Checksum mismatch for .*val.de.gz"):
        load_multi30k("val", folder=tmp_path)


def test_line_count_mismatch(tmp_path):
    _write_corpus(tmp_path, b"Ein Hund.\nZwei Katzen.\n", b"A dog.\n")
    with pytest.raises(CorpusError, match="2 lines but .* has 1"):
        load_multi30k("val", folder=tmp_path)


def test_non_utf8_names_the_line(tmp_path):
    _write_corpus(tmp_path, b"Ein Hund.\nZwei K\xe4tzchen.\n", b"A dog.\nTwo kittens.\n")
    with pytest.raises(CorpusError, match=r"val.de.gz, line 2: .*not UTF-8"):
        load_multi30k("val", folder=tmp_path)


def test_empty_line_names_the_line(tmp_path):
    _write_corpus(tmp_path, b"Ein Hund.\n \nDrei.\n", b"A dog.\nTwo.\nThree.\n")
    with pytest.raises(CorpusError, match=r"val.de.gz, line 2 is empty"):
        load_multi30k("val", folder=tmp_path)


def test_broken_gzip_and_bad_manifest(tmp_path):
    _write_corpus(tmp_path, b"Ein Hund.\n", b"A dog.\n")
    (tmp_path / "val.de.gz").write_bytes(b"not gzip at all")
    with pytest.raises(CorpusError, match="not a valid gzip"):
        data.read_lines(tmp_path / "val.de.gz")
    (tmp_path / "SHA256SUMS").write_text("nonsense\n")
    with pytest.raises(CorpusError, match="SHA256SUMS, line 1"):
        load_multi30k("val", folder=tmp_path)


def test_manifest_covers_every_shipped_file():
    folder = data.data_dir() / "multi30k"
    sums = data.read_manifest(folder)
    assert sorted(sums) == sorted(p.name for p in folder.glob("*.gz"))
    for name, digest in sums.items():
        data.verify_file(folder / name, digest)


def test_tatoeba_splits_are_disjoint_by_sentence():
    from transformer_lesson.data import load_tatoeba

    splits = {name: load_tatoeba(name) for name in ("train", "val", "test")}
    assert sum(map(len, splits.values())) == 169_813
    assert 2000 < len(splits["test"]) < 5000 and 2000 < len(splits["val"]) < 5000
    for side in ("src", "tgt"):
        train = {getattr(p, side) for p in splits["train"]}
        for held_out in ("val", "test"):
            shared = train & {getattr(p, side) for p in splits[held_out]}
            assert shared == set(), f"{held_out} shares {len(shared)} {side} sentences with train"
    # German first: the file stores English first
    assert ("Hallo!", "Hi.") in splits["train"] + splits["val"] + splits["test"]
    sample = load_tatoeba("train", limit=500)
    assert len(sample) == 500 and sample == load_tatoeba("train", limit=500)
    assert max(len(p.tgt) for p in sample) > 30  # a random sample, not the shortest pairs


def test_tatoeba_malformed_line_is_named(tmp_path):
    from transformer_lesson.data import load_tatoeba

    (tmp_path / "deu.txt.gz").write_bytes(gzip.compress(b"Hi.\tHallo!\nRun!\n"))
    digest = hashlib.sha256((tmp_path / "deu.txt.gz").read_bytes()).hexdigest()
    (tmp_path / "SHA256SUMS").write_text(f"{digest}  deu.txt.gz\n")
    with pytest.raises(CorpusError, match=r"deu.txt.gz, line 2: expected 'English<TAB>German', got 1 field"):
        load_tatoeba("train", folder=tmp_path)


def test_limit_must_be_a_count():
    with pytest.raises(ValueError, match="non-negative"):
        load_multi30k("val", limit=-1)
    with pytest.raises(ValueError, match="non-negative"):
        load_multi30k("val", limit=True)  # a bool is an int to Python, but not a count


def test_an_empty_corpus_file_is_an_error_not_zero_pairs(tmp_path):
    _write_corpus(tmp_path, b"", b"")
    with pytest.raises(CorpusError, match="holds no sentences"):
        load_multi30k("val", folder=tmp_path)


def test_every_odd_whitespace_becomes_a_space():
    assert normalize("a\u2002b\u3000c\td\u200ae") == "a b c d e"
    assert normalize("the 's' shape", "en") == "the 's' shape"


def test_a_missing_or_changed_file_gets_advice_for_where_it_lives(tmp_path, monkeypatch):
    monkeypatch.delenv("TL_DATA_DIR", raising=False)
    shipped = data.data_dir() / "multi30k" / "no_such_file.gz"  # in this checkout: git can restore it
    with pytest.raises(CorpusError, match=r"no_such_file\.gz is missing: restore it with "
                                          r"`git checkout -- data/multi30k/no_such_file\.gz` in "):
        data.verify_file(shipped, "0" * 64)
    elsewhere = tmp_path / "val.de.gz"
    elsewhere.write_bytes(b"changed")
    with pytest.raises(CorpusError, match=r"corrupt or was changed: replace it with an intact copy\.$"):
        data.verify_file(elsewhere, "0" * 64)
    monkeypatch.setenv("TL_DATA_DIR", str(tmp_path))
    with pytest.raises(CorpusError, match=r"corrupt or was changed: put it back into TL_DATA_DIR's folder, or "
                                          r"unset TL_DATA_DIR"):
        data.verify_file(elsewhere, "0" * 64)
