"""The corpus: Multi30k German-English, shipped in ``data/multi30k`` so the course works offline.

Loading a split verifies each file against the checksum manifest ``SHA256SUMS``, decodes it as
strict UTF-8, checks that both languages have the same number of lines, cleans the known noise
and refuses empty lines. Every failure names the file and, where there is one, the line.

Multi30k is for non-commercial research and education only; see ``data/multi30k/SOURCE.md``.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import html
import os
import random
import re
import unicodedata
from pathlib import Path
from typing import NamedTuple

DATA_ENV = "TL_DATA_DIR"

MULTI30K_SPLITS = {"train": "train", "val": "val", "test": "test_2016_flickr"}
MULTI30K_SIZES = {"train": 29_000, "val": 1_014, "test": 1_000}


class CorpusError(ValueError):
    """A corpus file is missing, corrupt or malformed. The message says which and where."""


class Pair(NamedTuple):
    """One aligned sentence pair: ``src`` is German, ``tgt`` its English translation."""

    src: str
    tgt: str


def data_dir() -> Path:
    """The folder holding the corpora: ``$TL_DATA_DIR``, else the one that ships with the course.

    Installed from a wheel (``pip install``), the corpus is the package's ``_data`` folder (the build
    copies ``data/`` there); in a checkout (``pip install -e .``) it is the repository's ``data/``.
    """
    override = os.environ.get(DATA_ENV)
    if override:
        folder = Path(override).expanduser()
        if not folder.is_dir():
            raise CorpusError(f"{DATA_ENV}={override} names no folder. Point it at a folder that holds multi30k/ "
                              f"(and tatoeba-deu-eng/), or unset it to use the corpus that ships with the course.")
        return folder
    package = Path(__file__).resolve().parent
    installed, checkout = package / "_data", package.parent / "data"
    if installed.is_dir():
        return installed
    if (package.parent / "pyproject.toml").is_file():
        if checkout.is_dir():
            return checkout
        problem = f"{checkout} is missing"
    else:
        problem = f"the package was installed without it ({installed} is missing)"
    raise CorpusError(f"The course's corpus is missing: {problem}. To fix it, {_how_to_restore('data')}, or set "
                      f"{DATA_ENV} to a folder that holds multi30k/.")


def _how_to_restore(what: str) -> str:
    """How to get a shipped corpus file or folder back, wherever this copy of the course lives."""
    package = Path(__file__).resolve().parent
    if os.environ.get(DATA_ENV):
        return f"put it back into {DATA_ENV}'s folder, or unset {DATA_ENV} to use the corpus that ships with the course"
    if not (package / "_data").is_dir() and (package.parent / "pyproject.toml").is_file():  # a checkout
        return f"restore it with `git checkout -- {what}` in {package.parent}"
    from transformer_lesson.colab import RELEASE, REPOSITORY

    source = f"transformer-lesson @ git+{REPOSITORY}@{RELEASE}"
    return f"reinstall the course with `pip install --force-reinstall \"{source}\"`"


# ---------------------------------------------------------------------------------------------
# Cleaning
# ---------------------------------------------------------------------------------------------

_SPACES = re.compile(r"[^\S ]")  # any whitespace but the plain space: tabs, NBSP, thin spaces...
_INVISIBLE = re.compile("[\u200b\u200c\u200d\u00ad\ufeff]")
_PRETOKENISED_CONTRACTION = re.compile(r"(\w) '(s|re|m|ve|ll|d)(?=[ .,!?;:]|$)")
_MULTIPLE_SPACES = re.compile(r" {2,}")


def normalize(text: str, lang: str | None = None) -> str:
    """Clean one sentence of the noise found in Multi30k (and Tatoeba).

    HTML entities are decoded (``&amp;`` -> ``&``), every whitespace character other than the
    plain space (tabs, non-breaking and thin spaces) becomes a plain space, invisible characters
    (zero-width space, soft hyphen) go, runs of spaces collapse and
    the ends are stripped. Text is put in Unicode NFC form, so that ``ü`` is one code point.
    For English, the few pre-tokenised contractions (``they 're``) are joined again.
    """
    if "&" in text:
        text = html.unescape(text)
    text = unicodedata.normalize("NFC", text)
    text = _INVISIBLE.sub("", _SPACES.sub(" ", text))
    if lang == "en":
        text = _PRETOKENISED_CONTRACTION.sub(r"\1'\2", text)
    return _MULTIPLE_SPACES.sub(" ", text).strip()


# ---------------------------------------------------------------------------------------------
# Reading and verifying files
# ---------------------------------------------------------------------------------------------


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(folder: Path) -> dict[str, str]:
    """Parse ``folder/SHA256SUMS`` (the format of ``sha256sum``) into {file name: digest}."""
    manifest = folder / "SHA256SUMS"
    if not manifest.is_file():
        raise CorpusError(f"No checksum manifest at {manifest}.")
    sums = {}
    for number, line in enumerate(manifest.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not re.fullmatch(r"[0-9a-f]{64}", parts[0]):
            raise CorpusError(f"{manifest}, line {number}: expected '<sha256>  <file>', got {line!r}.")
        sums[parts[1].lstrip("*")] = parts[0]
    return sums


def _fix_for(path: Path) -> str:
    """What to do about a missing or changed corpus file: restore a shipped one, replace any other."""
    try:
        shipped = Path("data") / Path(path).resolve().relative_to(data_dir().resolve())
    except (ValueError, CorpusError):
        return "replace it with an intact copy"
    return _how_to_restore(shipped.as_posix())


def verify_file(path: Path, expected_sha256: str) -> None:
    if not path.is_file():
        raise CorpusError(f"Corpus file {path} is missing: {_fix_for(path)}.")
    actual = sha256_of(path)
    if actual != expected_sha256:
        raise CorpusError(
            f"Checksum mismatch for {path}: sha256 is {actual}, the manifest says "
            f"{expected_sha256}. The file is corrupt or was changed: {_fix_for(path)}."
        )


def decode_lines(path: Path) -> list[str]:
    """The lines of a text file (gzip-compressed if it ends in ``.gz``), exactly as stored.

    Raises :class:`CorpusError` for a missing file, broken gzip data, or bytes that are not UTF-8
    (naming the line).
    """
    if not path.is_file():
        raise CorpusError(f"Corpus file {path} is missing.")
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as error:
            raise CorpusError(f"{path} is not a valid gzip file: {error}.") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise CorpusError(
            f"{path}, line {line}: bytes {raw[error.start:error.end]!r} are not UTF-8. "
            f"Save the file as UTF-8."
        ) from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the file's final newline
    return [line.rstrip("\r") for line in lines]


def read_lines(path: Path, lang: str | None = None) -> list[str]:
    """Read a text file as cleaned lines (:func:`normalize`); an empty line raises :class:`CorpusError`."""
    cleaned = []
    for number, line in enumerate(decode_lines(path), start=1):
        clean = normalize(line, lang)
        if not clean:
            raise CorpusError(f"{path}, line {number} is empty; every line must hold a sentence.")
        cleaned.append(clean)
    return cleaned


def load_parallel(src_path: Path, tgt_path: Path, src_lang: str = "de", tgt_lang: str = "en") -> list[Pair]:
    """Read two line-aligned files into pairs, checking that their line counts agree."""
    sources = read_lines(Path(src_path), src_lang)
    targets = read_lines(Path(tgt_path), tgt_lang)
    if not sources:
        raise CorpusError(f"{src_path} holds no sentences (an empty file, or an empty archive): a corpus "
                          f"file has one sentence per line. Restore it from the repository or download it again.")
    if len(sources) != len(targets):
        raise CorpusError(
            f"{src_path} has {len(sources)} lines but {tgt_path} has {len(targets)}: the two "
            f"sides of a parallel corpus must be aligned line by line."
        )
    return [Pair(s, t) for s, t in zip(sources, targets, strict=True)]


def load_multi30k(split: str, limit: int | None = None, folder: Path | None = None) -> list[Pair]:
    """Load a Multi30k split as German -> English :class:`Pair`s.

    ``split`` is ``"train"`` (29,000 pairs), ``"val"`` (1,014) or ``"test"`` (test_2016_flickr,
    1,000, the standard test set). ``limit`` keeps the first pairs only (quick mode uses it).
    """
    if split not in MULTI30K_SPLITS:
        raise ValueError(f"Unknown split {split!r}: choose one of {sorted(MULTI30K_SPLITS)}.")
    folder = Path(folder) if folder is not None else data_dir() / "multi30k"
    sums = read_manifest(folder)
    paths = {}
    for lang in ("de", "en"):
        name = f"{MULTI30K_SPLITS[split]}.{lang}.gz"
        if name not in sums:
            raise CorpusError(f"{folder / 'SHA256SUMS'} has no entry for {name}.")
        paths[lang] = folder / name
        verify_file(paths[lang], sums[name])
    pairs = load_parallel(paths["de"], paths["en"])
    return pairs if limit is None else pairs[:_check_limit(limit)]


def _check_limit(limit: int) -> int:
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
        raise ValueError(f"limit must be a non-negative number of pairs, got {limit!r}.")
    return limit


# ---------------------------------------------------------------------------------------------
# Tatoeba: a second, openly licensed corpus (CC BY 2.0 FR)
# ---------------------------------------------------------------------------------------------

TATOEBA_FILE = "deu.txt.gz"
TATOEBA_SPLITS = ("train", "val", "test")
TATOEBA_HELD_OUT_PERCENT = 2  # per held-out split


def read_tab_pairs(path: Path) -> list[tuple[str, str]]:
    """Read ``English<TAB>German`` lines (the manythings.org format) as (German, English) pairs.

    A line without exactly two non-empty fields raises :class:`CorpusError` with its number.
    """
    pairs = []
    for number, line in enumerate(decode_lines(path), start=1):
        fields = line.split("\t")
        de, en = (normalize(fields[1], "de"), normalize(fields[0], "en")) if len(fields) == 2 else ("", "")
        if not (de and en):
            raise CorpusError(
                f"{path}, line {number}: expected 'English<TAB>German', got {len(fields)} field(s): {line[:80]!r}."
            )
        pairs.append((de, en))
    return pairs


def _components(pairs: list[tuple[str, str]]) -> list[str]:
    """Connected components of the graph whose nodes are sentences and whose edges are pairs.

    Two pairs that share a German or an English sentence land in the same component, so a split
    by component never puts the same sentence in both training and test data.
    """
    parent: dict[str, str] = {}

    def find(node: str) -> str:
        while parent.setdefault(node, node) != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    for de, en in pairs:
        a, b = find("de:" + de), find("en:" + en)
        if a != b:
            parent[a] = b
    return [find("de:" + de) for de, _ in pairs]


def load_tatoeba(split: str, limit: int | None = None, folder: Path | None = None) -> list[Pair]:
    """Load a split of the Tatoeba German-English pairs as German -> English :class:`Pair`s.

    The file has no official split. Pairs are grouped so that pairs sharing a sentence (one English
    sentence often has several German translations) stay together, and each group is assigned to
    ``val`` (2 %), ``test`` (2 %) or ``train`` (the rest) by a hash of its text: the split is the
    same on every machine and does not leak sentences. The file is sorted by length, so ``limit``
    takes a seeded random sample rather than the first (shortest) pairs.
    """
    if split not in TATOEBA_SPLITS:
        raise ValueError(f"Unknown split {split!r}: choose one of {TATOEBA_SPLITS}.")
    folder = Path(folder) if folder is not None else data_dir() / "tatoeba-deu-eng"
    chosen = list(_tatoeba_splits(folder.resolve())[split])
    if limit is not None and _check_limit(limit) < len(chosen):
        chosen = random.Random(0).sample(chosen, limit)
    return chosen


@functools.lru_cache(maxsize=2)
def _tatoeba_splits(folder: Path) -> dict[str, tuple[Pair, ...]]:
    sums = read_manifest(folder)
    if TATOEBA_FILE not in sums:
        raise CorpusError(f"{folder / 'SHA256SUMS'} has no entry for {TATOEBA_FILE}.")
    verify_file(folder / TATOEBA_FILE, sums[TATOEBA_FILE])
    pairs = read_tab_pairs(folder / TATOEBA_FILE)
    groups = _components(pairs)
    representative: dict[str, str] = {}
    for (de, en), group in zip(pairs, groups, strict=True):
        text = en + "\t" + de
        if group not in representative or text < representative[group]:
            representative[group] = text
    splits: dict[str, list[Pair]] = {name: [] for name in TATOEBA_SPLITS}
    held_out = TATOEBA_HELD_OUT_PERCENT
    for (de, en), group in zip(pairs, groups, strict=True):
        bucket = int(hashlib.sha256(representative[group].encode()).hexdigest()[:8], 16) % 100
        name = "test" if bucket < held_out else "val" if bucket < 2 * held_out else "train"
        splits[name].append(Pair(de, en))
    return {name: tuple(chosen) for name, chosen in splits.items()}
