"""The command line of lesson 09: ``python -m transformer_lesson.train`` and ``... .translate``.

Each command runs as a user would run it, in a subprocess (the quick preset: a tiny model, seconds).
One finished run (``finished_run``) is shared: it is the reference an interrupted run must match,
and the model the translate tests use.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from transformer_lesson.train import RunError, TrainConfig, apply_overrides, preset

SHORT = ["--set", "max_steps=24", "--set", "eval_every=12", "--set", "checkpoint_every=4"]


def run(*args: str, stdin: bytes | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    env.pop("TL_QUICK", None)  # the preset decides the size, not quick mode
    return subprocess.run([sys.executable, "-m", *args], input=stdin, capture_output=True, timeout=timeout, env=env)


def train(out: Path, *extra: str) -> subprocess.CompletedProcess:
    return run("transformer_lesson.train", "--preset", "quick", "--out", str(out), *SHORT, *extra)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model"]


def mean_of(paths: list[Path]) -> dict[str, torch.Tensor]:
    """The element-wise mean of the checkpoints' weights, computed here (not with the package's function)."""
    loaded = [weights(p) for p in paths]
    return {name: sum(w[name] for w in loaded) / len(loaded) for name in loaded[0]}


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "quick"
    result = train(out)
    assert result.returncode == 0, result.stderr.decode()
    return out


# -- settings ------------------------------------------------------------------------------------


def test_overrides_are_typed_like_their_setting():
    config = apply_overrides(TrainConfig(), ["lr=1e-3", "max_steps=7", "norm_first=false", "clip_norm=none",
                                             "activation=gelu", "train_limit=100"])
    assert (config.lr, config.max_steps, config.norm_first, config.clip_norm) == (1e-3, 7, False, None)
    assert (config.activation, config.train_limit) == ("gelu", 100)
    assert preset("quick").d_model < preset("cpu").d_model < preset("gpu").d_model


@pytest.mark.parametrize("override, words", [
    ("learning_rate=1", ["no such setting", "lr"]),  # a close match is suggested
    ("max_steps=ten", ["max_steps", "an int"]),
    ("norm_first=maybe", ["true or false"]),
    ("lr", ["key=value"]),
    ("d_model=none", ["d_model", "an int"]),  # none only where a setting may be none
])
def test_bad_overrides_are_named(override, words):
    with pytest.raises(RunError) as error:
        apply_overrides(TrainConfig(), [override])
    for word in words:
        assert word in str(error.value)


# -- train ---------------------------------------------------------------------------------------


def test_a_run_writes_a_model_and_its_results(finished_run):
    results = json.loads((finished_run / "results.json").read_text())
    assert {"test_bleu", "test_bleu_signature", "test_lowercased_bleu", "selected_step", "validation_bleu",
            "target_tokens_per_second", "data_wait_share"} <= results.keys()
    assert results["test_bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
    assert results["steps"] == 24
    history = torch.load(finished_run / "model.pt", weights_only=True)["history"]
    best = max(history["evals"], key=lambda e: e["bleu"])  # chosen on validation BLEU
    assert results["validation_bleu_best_step"] == best["bleu"] and results["best_step"] == best["step"]
    assert results["validation_bleu_average"] is not None  # the quick preset averages steps 12, 18, 24
    snapshots = sorted((finished_run / "snapshots").glob("step-*.pt"))
    assert [p.name for p in snapshots] == ["step-000012.pt", "step-000018.pt", "step-000024.pt"]
    if results["validation_bleu_average"] > best["bleu"]:  # the average wins on validation
        assert results["averaged_steps"] == [12, 18, 24] and results["selected_step"] == 24
        mean = mean_of(snapshots)
        for name, tensor in weights(finished_run / "model.pt").items():
            torch.testing.assert_close(tensor, mean[name], rtol=0, atol=1e-6)
    else:
        assert results["averaged_steps"] == [] and results["selected_step"] == best["step"]
        assert_same_weights(finished_run / "model.pt", finished_run / "best.pt")
    assert 0 < results["data_wait_share"] < 1 and results["target_tokens_per_second"] > 0
    config = json.loads((finished_run / "config.json").read_text())
    assert config["max_steps"] == 24 and config["d_model"] == 32


def test_a_finished_run_is_not_trained_again(finished_run):
    before = {p.name: p.stat().st_mtime_ns for p in finished_run.iterdir()}
    result = train(finished_run)
    assert result.returncode == 0
    assert b"finished run" in result.stdout
    assert {p.name: p.stat().st_mtime_ns for p in finished_run.iterdir()} == before


def test_killed_at_any_moment_and_resumed_it_ends_as_an_uninterrupted_run(finished_run, tmp_path):
    """SIGKILL twice, at random moments after the first checkpoint; the resumed run matches bit for bit."""
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "transformer_lesson.train", "--preset", "quick", "--out", str(out), *SHORT]
    rng = random.Random(0)
    kills = 0
    for _ in range(2):
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while not (out / "checkpoint.pt").exists() and process.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.5))
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            kills += 1
        process.wait()
    assert kills >= 1, "the run finished before it could be killed: make it longer"
    result = train(out)
    assert result.returncode == 0, result.stderr.decode()
    assert b"Resuming from" in result.stdout or b"finished run" in result.stdout
    assert_same_weights(out / "model.pt", finished_run / "model.pt")
    assert_same_weights(out / "checkpoint.pt", finished_run / "checkpoint.pt")
    for snapshot in (finished_run / "snapshots").iterdir():  # none missed or written twice differently
        assert_same_weights(out / "snapshots" / snapshot.name, snapshot)
    assert json.loads((out / "results.json").read_text())["test_bleu"] == \
        json.loads((finished_run / "results.json").read_text())["test_bleu"]


def test_other_settings_in_the_same_folder_are_refused(finished_run):
    result = train(finished_run, "--set", "lr=0.1")
    assert result.returncode == 1
    assert b"lr: 0.003 -> 0.1" in result.stderr and b"Traceback" not in result.stderr


def test_a_truncated_checkpoint_is_reported_and_kept(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"PK\x03\x04 half a file")
    result = train(out)
    assert result.returncode == 1
    assert b"truncated or corrupt" in result.stderr and b"Traceback" not in result.stderr
    assert (out / "checkpoint.pt").read_bytes() == b"PK\x03\x04 half a file"  # not deleted or overwritten


def test_a_diverging_run_stops_and_names_the_step(tmp_path):
    result = train(tmp_path / "nan", "--set", "lr=1e30", "--set", "warmup_steps=0", "--set", "clip_norm=none")
    assert result.returncode == 1
    line = result.stderr.decode().strip().splitlines()[-1]
    assert line.startswith("train: error: The loss became") and "at step" in line


def test_torchrun_with_two_processes_agrees_with_one_on_the_same_global_batch(tmp_path):
    """2 gloo processes, each with its share of the batches, vs one process accumulating both shares."""
    exact = ["--set", "dropout=0", "--set", "max_steps=8", "--set", "eval_every=8", "--set", "warmup_steps=2",
             "--set", "val_limit=8", "--set", "test_limit=8"]
    one = train(tmp_path / "one", *exact, "--set", "accumulate=2")
    assert one.returncode == 0, one.stderr.decode()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("TL_QUICK", None)
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "transformer_lesson.train", "--preset", "quick", "--out", str(tmp_path / "two"), *SHORT, *exact],
        capture_output=True, timeout=300, env=env)
    assert two.returncode == 0, two.stderr.decode()[-3000:]
    a, b = weights(tmp_path / "one" / "checkpoint.pt"), weights(tmp_path / "two" / "checkpoint.pt")
    for name in a:
        x, y = a[name], b[name]
        if name.endswith("in_proj.bias"):
            # The key bias adds the same number to every score of a query, which softmax ignores: its
            # true gradient is 0, and Adam turns the rounding noise left in it (which differs between an
            # all-reduce and a sum in one process) into updates of the size of the learning rate.
            d = x.shape[0] // 3
            x, y = torch.cat([x[:d], x[2 * d:]]), torch.cat([y[:d], y[2 * d:]])
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5, msg=name)
    la = torch.load(tmp_path / "one" / "checkpoint.pt", weights_only=True)["history"]["losses"]
    lb = torch.load(tmp_path / "two" / "checkpoint.pt", weights_only=True)["history"]["losses"]
    torch.testing.assert_close(torch.tensor(la), torch.tensor(lb), rtol=1e-4, atol=1e-5)
    assert json.loads((tmp_path / "two" / "results.json").read_text())["processes"] == 2


# -- translate -----------------------------------------------------------------------------------


def translate(model: Path, stdin: bytes, *extra: str) -> subprocess.CompletedProcess:
    return run("transformer_lesson.translate", "--checkpoint", str(model), *extra, stdin=stdin)


def test_translate_gives_one_line_per_line_whatever_the_input(finished_run):
    lines = ["Ein Hund läuft.", "", "   ", " ".join(["Hund"] * 1000), "Ein 🐕 rennt 🏃.", "Ζ ж ☃ 漢字 ∮",
             "Zwei Männer spielen Fußball."]
    data = "\n".join(lines).encode() + b"\n\xff\xfe kaputt\r\n"  # + a line with invalid UTF-8, CRLF
    result = translate(finished_run / "model.pt", data)
    assert result.returncode == 0, result.stderr.decode()
    out = result.stdout.decode().split("\n")
    assert out[-1] == "" and len(out) - 1 == len(lines) + 1  # one line each, every one ended by \n
    assert out[1] == "" and out[2] == ""  # empty and whitespace-only lines give empty lines
    assert b"not valid UTF-8" in result.stderr and b"Traceback" not in result.stderr
    again = translate(finished_run / "model.pt", data, "--batch-size", "2")
    assert again.stdout == result.stdout  # batching changes nothing


def test_translate_reads_a_file_and_keeps_the_order(finished_run, tmp_path):
    sentences = ["Ein Mann.", "Eine Frau fährt Fahrrad auf der Straße.", "Kinder."]
    (tmp_path / "de.txt").write_text("\n".join(sentences))  # no final newline
    from_file = run("transformer_lesson.translate", "--checkpoint", str(finished_run / "model.pt"),
                    str(tmp_path / "de.txt"))
    from_stdin = translate(finished_run / "model.pt", "\n".join(reversed(sentences)).encode())
    assert from_file.returncode == 0
    assert from_file.stdout.decode().splitlines() == list(reversed(from_stdin.stdout.decode().splitlines()))
    assert translate(finished_run / "model.pt", b"").stdout == b""


@pytest.mark.parametrize("content, words", [
    (os.urandom(2000), "is not a checkpoint"),
    (b"<!DOCTYPE html><html><body>Not Found</body></html>", "is not a checkpoint"),
    (b"PK\x03\x04" + os.urandom(2000), "truncated or corrupt"),
    (None, "No checkpoint"),
])
def test_translate_refuses_what_is_not_a_checkpoint_in_one_line(tmp_path, content, words):
    path = tmp_path / "model.pt"
    if content is not None:
        path.write_bytes(content)
    result = translate(path, b"Ein Hund.\n")
    assert result.returncode == 1 and result.stdout == b""
    err = result.stderr.decode().strip()
    assert len(err.splitlines()) == 1 and err.startswith("translate: error:") and words in err


def test_translate_refuses_a_checkpoint_without_tokenizer(tmp_path, finished_run):
    payload = torch.load(finished_run / "best.pt", weights_only=True)
    payload["tokenizer_model"] = None
    torch.save(payload, tmp_path / "bare.pt")
    result = translate(tmp_path / "bare.pt", b"Ein Hund.\n")
    assert result.returncode == 1 and b"holds no tokenizer" in result.stderr


def test_translate_argument_errors(finished_run, tmp_path):
    assert translate(finished_run / "model.pt", b"x\n", "--batch-size", "0").returncode == 2
    result = translate(finished_run / "model.pt", b"x\n", "--device", "cuda")
    if not torch.cuda.is_available():
        assert result.returncode == 1 and b"CUDA device was asked for" in result.stderr
    result = run("transformer_lesson.translate", "--checkpoint", str(finished_run / "model.pt"), str(tmp_path))
    assert result.returncode == 1 and b"is a folder" in result.stderr


def test_no_gpu_where_one_was_asked_for_is_one_line(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = train(tmp_path / "gpu", "--set", "device=cuda")
    assert result.returncode == 1 and b"Traceback" not in result.stderr
    assert result.stderr.decode().strip().splitlines()[-1].startswith("train: error: A CUDA device was asked for")


def test_translate_with_beam_and_without_cache(finished_run):
    data = "Ein Hund läuft.\n\nZwei Männer spielen Fußball.\n".encode()
    default = translate(finished_run / "model.pt", data)  # beam 5
    uncached = translate(finished_run / "model.pt", data, "--no-cache")
    greedy = translate(finished_run / "model.pt", data, "--beam", "1")
    greedy_uncached = translate(finished_run / "model.pt", data, "--beam", "1", "--no-cache")
    assert {default.returncode, uncached.returncode, greedy.returncode, greedy_uncached.returncode} == {0}
    assert uncached.stdout == default.stdout and greedy_uncached.stdout == greedy.stdout  # speed, not output
    assert len(greedy.stdout.decode().split("\n")) == 4


@pytest.mark.parametrize("average_score, chosen", [(3.0, True), (2.0, False)])  # a tie keeps the single step
def test_the_average_of_the_last_steps_is_chosen_only_when_it_scores_higher_on_validation(
        tmp_path, monkeypatch, average_score, chosen):
    """Validation scores are stubbed (12 training steps are real): steps 6 and 12 score 1 and 2."""
    import types

    import transformer_lesson.train as train_module

    scores = iter([1.0, 2.0, average_score, 0.5])  # validation at steps 6 and 12, the average, test
    scored_weights = []

    def fake_evaluate_bleu(model, tokenizer, pairs, device, batch_size):
        scored_weights.append({n: t.detach().clone() for n, t in model.state_dict().items()})
        bleu = types.SimpleNamespace(score=next(scores), signature="nrefs:1|case:mixed|tok:13a|version:stub")
        return types.SimpleNamespace(bleu=bleu, lowercased=bleu, sources=[], references=[], hypotheses=[])

    monkeypatch.setattr(train_module, "evaluate_bleu", fake_evaluate_bleu)
    config = preset("quick", ["max_steps=12", "eval_every=6", "average_checkpoints=3", "average_start=0.5",
                              "progress=false", "train_limit=200"])
    results = train_module.train(config, tmp_path / "run")
    snapshots = [tmp_path / "run" / "snapshots" / f"step-{s:06d}.pt" for s in (6, 9, 12)]
    mean = mean_of(snapshots)
    for name, tensor in scored_weights[2].items():  # what was scored third is the mean of the three
        torch.testing.assert_close(tensor, mean[name], rtol=0, atol=1e-6)
    assert results["validation_bleu_average"] == average_score and results["validation_bleu_best_step"] == 2.0
    final = weights(tmp_path / "run" / "model.pt")
    if chosen:
        assert results["averaged_steps"] == [6, 9, 12] and results["validation_bleu"] == 3.0
        for name, tensor in final.items():
            torch.testing.assert_close(tensor, mean[name], rtol=0, atol=1e-6)
    else:
        assert results["averaged_steps"] == [] and results["selected_step"] == 12
        assert_same_weights(tmp_path / "run" / "model.pt", tmp_path / "run" / "best.pt")
    assert all(torch.equal(scored_weights[3][n], final[n]) for n in final)  # test scores the final model


def test_averaging_that_does_not_fit_the_run_is_refused_before_anything_is_written(tmp_path):
    from transformer_lesson.train import train as train_in_process

    with pytest.raises(RunError, match="average_checkpoints=8 different steps do not fit between step 5 and max_st"):
        train_in_process(preset("cpu", ["average_checkpoints=8", "max_steps=10", "warmup_steps=1"]), tmp_path / "run")
    with pytest.raises(RunError, match="average_start is a fraction"):
        train_in_process(preset("cpu", ["average_start=1.5"]), tmp_path / "run")
    assert not (tmp_path / "run").exists()
