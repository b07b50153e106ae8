import pytest
import torch

from transformer_lesson.batching import pad_sequences
from transformer_lesson.checks.batching import check_pad_sequences
from transformer_lesson.checks.core import (
    CheckFailed,
    Mistake,
    check_against,
    compare,
    expect_shape,
    explain_crashes,
    explain_crashes_and_unwritten,
    padded_mask,
)


def test_expect_shape_names_the_wrong_dimension():
    with pytest.raises(CheckFailed, match=r"dimension 2 \(d_model\) is 8, expected 16"):
        expect_shape(torch.zeros(2, 5, 8), (2, 5, 16), "output", ("batch", "time", "d_model"))


def test_expect_shape_spots_swapped_dimensions():
    with pytest.raises(CheckFailed, match="batch and time look swapped"):
        expect_shape(torch.zeros(5, 2, 8), (2, 5, 8), "hidden", ("batch", "time", "d"))


def test_expect_shape_wrong_rank_and_type():
    with pytest.raises(CheckFailed, match="has 2 dimensions.*3 were expected"):
        expect_shape(torch.zeros(2, 5), (2, 5, None), "x")
    with pytest.raises(CheckFailed, match="should be a torch.Tensor but is a list"):
        expect_shape([1, 2], (2,), "x")
    expect_shape(torch.zeros(2, 7), (2, None), "x")  # None accepts any size


def test_compare_reports_the_first_wrong_value():
    expected = torch.zeros(3, 4)
    actual = expected.clone()
    actual[1, 2] = 0.5
    with pytest.raises(CheckFailed, match=r"at index \[1, 2\] you have 0.5, expected 0"):
        compare(actual, expected, "out")
    with pytest.raises(CheckFailed, match=r"should return 2 value\(s\) but returned 1"):
        compare((actual,), (expected, expected), "out")
    with pytest.raises(CheckFailed, match="NaN"):
        compare(torch.full((2,), float("nan")), torch.zeros(2), "out")


def test_check_names_a_known_mistake_and_passes_a_right_answer(capsys):
    reference = lambda x: torch.softmax(x, dim=-1)
    wrong_axis = lambda x: torch.softmax(x, dim=0)
    mistakes = [Mistake("softmax over the wrong axis", wrong_axis)]
    make = lambda g: {"x": torch.randn(3, 4, generator=g)}
    with pytest.raises(CheckFailed, match="Likely cause: softmax over the wrong axis"):
        check_against(wrong_axis, reference, make, name="softmax", mistakes=mistakes)
    check_against(reference, reference, make, name="softmax", mistakes=mistakes)
    assert "✓ softmax" in capsys.readouterr().out


def test_check_refuses_in_place_changes():
    def sneaky(x):
        x.mul_(2)
        return x / 2

    with pytest.raises(CheckFailed, match="changed its input 'x' in place"):
        check_against(sneaky, lambda x: x.clone(), lambda g: {"x": torch.randn(3, generator=g)}, name="f")


def test_not_implemented_reaches_the_student():
    def todo(sequences, pad_id):
        raise NotImplementedError()

    with pytest.raises(CheckFailed, match=r"^pad_sequences is not written yet: replace `raise NotImplementedError"):
        check_pad_sequences(todo)


def test_pad_exercise_accepts_the_reference_written_again_but_not_the_package_s_own(own_copy):
    check_pad_sequences(own_copy(pad_sequences))
    with pytest.raises(CheckFailed, match="runs the package's own answer, transformer_lesson.batching.pad_sequences"):
        check_pad_sequences(pad_sequences)


@pytest.mark.parametrize(
    "wrong, message",
    [
        (lambda s, p: (pad_sequences(s, p)[0], ~pad_sequences(s, p)[1]), "mask is inverted"),
        (lambda s, p: pad_sequences(s, 0), "instead of the `pad_id`"),
        (lambda s, p: tuple(t.flip(1) for t in pad_sequences([x[::-1] for x in s], p)), "padding is on the left"),
        (lambda s, p: tuple(t.T for t in pad_sequences(s, p)), "look swapped"),
        (lambda s, p: (pad_sequences(s, p)[0], pad_sequences(s, p)[1].long()), "boolean tensor"),
        (lambda s, p: (pad_sequences(s, p)[0], pad_sequences(s, p)[1].float()), "boolean tensor"),
        (lambda s, p: (pad_sequences(s, p)[0].int(), pad_sequences(s, p)[1]), "dtype torch.int32"),
        (lambda s, p: pad_sequences(s, p)[0], "should return 2 values"),
    ],
)
def test_pad_exercise_diagnoses_common_mistakes(wrong, message):
    with pytest.raises(CheckFailed, match=message) as failure:
        check_pad_sequences(wrong)
    if "boolean" in message:  # only the dtype is wrong: no mistake and no swapped outputs to name
        assert "Likely cause" not in str(failure.value)
        assert "check the order" not in str(failure.value)


def _first_length_answer(sequences, pad_id):
    width = len(sequences[0])
    ids = torch.full((len(sequences), width), pad_id)
    for row, seq in enumerate(sequences):
        ids[row, : min(width, len(seq))] = torch.tensor(seq[:width])
    return ids, ids != pad_id


def _mutating_answer(sequences, pad_id):
    longest = max(map(len, sequences))
    for seq in sequences:
        seq.extend([pad_id] * (longest - len(seq)))
    ids = torch.tensor(sequences)
    return ids, ids != pad_id


@pytest.mark.parametrize(
    "wrong, message",
    [
        (_mutating_answer, "changed its input 'sequences' in place"),
        (lambda s, p: None, "returned None: did you forget the `return`"),
        (lambda s, p: [list(x) + [p] * (max(map(len, s)) - len(x)) for x in s],
         "should be a torch.Tensor but is a list|should return 2"),
        (lambda s, p: tuple(t.tolist() for t in pad_sequences(s, p)), r"\[0\] should be a torch.Tensor but is a list"),
        (lambda s, p: pad_sequences(s, p)[::-1], "check the order of the values you return"),
        (lambda s, p: (pad_sequences(s, p)[0], pad_sequences(s, p)[0] != 0), "compares the ids with 0"),
        (_first_length_answer, "length of the first sequence"),
    ],
)
def test_pad_exercise_more_mistakes(wrong, message):
    with pytest.raises(CheckFailed, match=message):
        check_pad_sequences(wrong)


def test_pad_exercise_explains_a_crash():
    def ragged(sequences, pad_id):
        ids = torch.tensor(sequences)  # fails: the rows have different lengths
        return ids, ids != pad_id

    with pytest.raises(CheckFailed, match=r"(?s)pad_sequences raised ValueError at line \d+ of ragged "
                                          r"\(`ids = torch.tensor\(sequences\).*`\):\n.*torch.full\(\(batch, "):
        check_pad_sequences(ragged)


def test_a_mistake_that_agrees_with_the_reference_is_not_named():
    # The mistake's output is within tolerance of the reference here, so it cannot be the bug,
    # even though the (wrong) answer is within tolerance of the mistake too.
    reference = lambda x: torch.zeros_like(x)
    harmless = Mistake("never the cause", lambda x: torch.full_like(x, 0.8e-5))
    answer = lambda x: torch.full_like(x, 1.6e-5)
    with pytest.raises(CheckFailed) as failure:
        check_against(answer, reference, lambda g: {"x": torch.randn(3, generator=g)}, name="f",
                      mistakes=[harmless])
    assert "Likely cause" not in str(failure.value)


def test_mistakes_and_order_hints_need_the_same_dtype():
    reference = lambda x: (x.long(), x > 0)
    float_mask = Mistake("never the cause", lambda x: (x.long(), (x > 0).float()))
    answer = lambda x: (x.long(), (x > 0).long())  # the mistake's values, but another dtype
    make = lambda g: {"x": torch.randint(-3, 3, (8,), generator=g).float()}
    with pytest.raises(CheckFailed, match="should be a boolean tensor") as failure:
        check_against(answer, reference, make, name="f", mistakes=[float_mask])
    assert "Likely cause" not in str(failure.value) and "check the order" not in str(failure.value)
    with pytest.raises(CheckFailed, match="check the order of the values you return"):
        check_against(lambda x: reference(x)[::-1], reference, make, name="f")


def test_mistakes_can_be_recognised_within_a_looser_tolerance():
    make = lambda g: {"x": torch.randn(6, generator=g) + torch.randint(1, 6, (1,), generator=g)}
    reference = lambda x: x.sin()
    cosine = Mistake("cos instead of sin", lambda x: x.cos())
    rounded = lambda x: x.cos() + 0.01  # the mistake, computed less precisely than the check does
    for mistake_atol, named in ((None, False), (0.1, True)):
        with pytest.raises(CheckFailed) as failure:
            check_against(rounded, reference, make, name="f", mistakes=[cosine], confirm_mistakes=True,
                          mistake_atol=mistake_atol)
        assert ("Likely cause: cos instead of sin" in str(failure.value)) == named


def test_a_loose_mistake_tolerance_names_only_answers_closer_to_the_mistake():
    # The answer is within mistake_atol of this mistake, but closer to the reference: never named.
    make = lambda g: {"x": torch.randn(6, generator=g)}
    reference = lambda x: x.sin()
    near = Mistake("never the cause", lambda x: x.sin() + 0.15)
    with pytest.raises(CheckFailed) as failure:
        check_against(lambda x: x.sin() + 0.05, reference, make, name="f", mistakes=[near],
                      confirm_mistakes=True, mistake_atol=0.1)
    assert "Likely cause" not in str(failure.value)


def test_crash_hints_for_index_errors_only_when_an_index_is_out_of_range():
    def crash(error):
        def student(x):
            raise error
        return explain_crashes(student, "f", index_hint="off by one?")

    with pytest.raises(CheckFailed, match="off by one"):
        crash(IndexError("index 5 is out of bounds for dimension 1 with size 5"))(torch.zeros(2))
    for message in ("tensors used as indices must be long, int, byte or bool tensors",
                    "Dimension out of range (expected to be in range of [-2, 1], but got 2)"):
        with pytest.raises(CheckFailed, match="raised IndexError on inputs \\(2,\\)") as failure:
            crash(IndexError(message))(torch.zeros(2))
        assert "off by one" not in str(failure.value)


def test_failure_message_shows_the_failing_input():
    with pytest.raises(CheckFailed, match=r"inputs: sequences = \[\[.*pad_id = \d"):
        check_pad_sequences(lambda s, p: (pad_sequences(s, p)[0], pad_sequences(s, p)[1].roll(1, 1)))


def test_token_lists_are_compared_as_sentences():
    with pytest.raises(CheckFailed, match=r"out\[0\] \(sentence 0\) has 3 tokens, expected 1:\n"
                                          r"  yours:    \[5, 6, 7\]\n  expected: \[5\]"):
        compare([[5, 6, 7], [4]], [[5], [4]], "out")
    with pytest.raises(CheckFailed, match=r"out\[1\] \(sentence 1\) differs first at token 1: you have 9, expected 8"):
        compare([[5], [4, 9]], [[5], [4, 8]], "out")
    with pytest.raises(CheckFailed, match="should return 2 value"):
        compare([[5]], [[5], [4]], "out")  # the number of sentences is still a count of values
    compare([(5, 6), []], [[5, 6], []], "out")  # a tuple of ints is as good as a list


def test_an_unwritten_exercise_is_reported_and_a_crash_explained():
    def unwritten(x):
        raise NotImplementedError()

    with pytest.raises(CheckFailed, match=r"my_fn is not written yet: replace `raise NotImplementedError\(\)`"):
        explain_crashes_and_unwritten(unwritten, "my_fn")(torch.zeros(2))
    with pytest.raises(CheckFailed, match=r"(?s)my_fn raised IndexError on inputs \(2,\).*off by one\?.*the hint"):
        explain_crashes_and_unwritten(lambda x: x[5], "my_fn", "the hint", index_hint="off by one?")(torch.zeros(2))


def test_padded_masks_are_real_tokens_then_padding_with_one_full_and_one_padded_row():
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        mask = padded_mask(generator, 4, 7)
        assert mask.shape == (4, 7) and mask.dtype == torch.bool
        lengths = mask.sum(1)
        assert torch.equal(mask, torch.arange(7)[None, :] < lengths[:, None])  # no holes: padding at the end
        assert lengths[0] == 7 and lengths[-1] == 5 and (lengths >= 1).all()
