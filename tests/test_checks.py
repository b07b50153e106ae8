import pytest
import torch

from transformer_lesson.batching import pad_sequences
from transformer_lesson.checks.batching import check_pad_sequences
from transformer_lesson.checks.core import CheckFailed, Mistake, check_against, compare, expect_shape


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
    with pytest.raises(CheckFailed, match="2 part"):
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

    with pytest.raises(NotImplementedError):
        check_pad_sequences(todo)


def test_pad_exercise_accepts_the_reference():
    check_pad_sequences(pad_sequences)


@pytest.mark.parametrize(
    "wrong, message",
    [
        (lambda s, p: (pad_sequences(s, p)[0], ~pad_sequences(s, p)[1]), "mask is inverted"),
        (lambda s, p: pad_sequences(s, 0), "instead of the `pad_id`"),
        (lambda s, p: tuple(t.flip(1) for t in pad_sequences([x[::-1] for x in s], p)), "padding is on the left"),
        (lambda s, p: tuple(t.T for t in pad_sequences(s, p)), "look swapped"),
        (lambda s, p: (pad_sequences(s, p)[0], pad_sequences(s, p)[1].long()), "boolean tensor"),
        (lambda s, p: (pad_sequences(s, p)[0].int(), pad_sequences(s, p)[1]), "dtype torch.int32"),
        (lambda s, p: pad_sequences(s, p)[0], "part"),
    ],
)
def test_pad_exercise_diagnoses_common_mistakes(wrong, message):
    with pytest.raises(CheckFailed, match=message):
        check_pad_sequences(wrong)
