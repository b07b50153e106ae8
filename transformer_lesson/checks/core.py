"""The machinery behind every exercise check.

A check runs the student's function and the package's reference on the same fresh random inputs
and compares the results. When they differ it does not stop at "wrong": it says which dimension
of which output has the wrong size, or, when the values differ, whether the student's output
matches one of the *known mistakes* for that exercise (a buggy implementation written on purpose,
such as "softmax over the wrong axis"), and names it.

Checks raise :class:`CheckFailed` (an AssertionError, so nbgrader and pytest count it as a
failure) and print one line when they pass.
"""

from __future__ import annotations

import copy
import functools
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch


class CheckFailed(AssertionError):
    """An exercise answer disagrees with the reference. The message says how."""


def describe_shape(shape: Sequence[int], dims: Sequence[str] | None = None) -> str:
    """``(2, 5)`` or, with names, ``(batch=2, time=5)``."""
    if dims is None or len(dims) != len(shape):
        return "(" + ", ".join(str(s) for s in shape) + ")"
    return "(" + ", ".join(f"{d}={s}" for d, s in zip(dims, shape, strict=True)) + ")"


def expect_shape(
    tensor: Any,
    expected: Sequence[int | None],
    name: str = "tensor",
    dims: Sequence[str] | None = None,
) -> None:
    """Raise :class:`CheckFailed` unless ``tensor.shape`` matches ``expected``.

    ``None`` in ``expected`` accepts any size. ``dims`` names the dimensions (``("batch", "time",
    "d_model")``) so that the message can say which one is wrong, and whether two look swapped.
    """
    if not isinstance(tensor, torch.Tensor):
        raise CheckFailed(f"{name} should be a torch.Tensor but is a {type(tensor).__name__}.")
    shape = tuple(tensor.shape)
    want = tuple(expected)
    named = dims is not None and len(dims) == len(want)
    want_text = describe_shape(["?" if w is None else w for w in want], dims)
    if len(shape) != len(want):
        raise CheckFailed(
            f"{name} has {len(shape)} dimensions, shape {describe_shape(shape)}, "
            f"but {len(want)} were expected: {want_text}."
        )
    wrong = [i for i, (s, w) in enumerate(zip(shape, want, strict=True)) if w is not None and s != w]
    if not wrong:
        return
    lines = [f"{name} has shape {describe_shape(shape)} but {want_text} was expected."]
    for i in wrong:
        label = f"dimension {i}" + (f" ({dims[i]})" if named else "")
        lines.append(f"  {label} is {shape[i]}, expected {want[i]}.")
    concrete = [w for w in want if w is not None]
    if len(concrete) == len(want) and sorted(shape) == sorted(concrete):
        if len(wrong) == 2:
            a, b = wrong
            names = (dims[a], dims[b]) if named else (str(a), str(b))
            lines.append(
                f"  The sizes are right but in the wrong order: dimensions {names[0]} and "
                f"{names[1]} look swapped (a transpose or a wrong layout)."
            )
        else:
            lines.append("  The sizes are right but in the wrong order (check your permute/view).")
    raise CheckFailed("\n".join(lines))


def _leaves(actual: Any, expected: Any, name: str) -> list[tuple[str, Any, Any]]:
    """Pair up the parts of ``actual`` with those of ``expected``, following ``expected``'s structure.

    Raises :class:`CheckFailed` when the structure differs (None, a list where a tuple of tensors
    was expected, the wrong number of values). A list of ints (a sequence of token ids, which
    may have any length) is one part, compared as a whole.
    """
    if _is_token_list(expected):
        if actual is None:
            raise CheckFailed(f"{name} is None: did you forget the `return` statement?")
        return [(name, actual, expected)]
    if isinstance(expected, tuple | list):
        if actual is None:
            raise CheckFailed(f"{name} returned None: did you forget the `return` statement?")
        if not isinstance(actual, tuple | list):
            raise CheckFailed(
                f"{name} should return {len(expected)} values (a tuple) but returned a "
                f"{type(actual).__name__}."
            )
        if len(actual) != len(expected):
            raise CheckFailed(
                f"{name} should return {len(expected)} value(s) but returned {len(actual)}: "
                f"did you return the right number of values?"
            )
        out = []
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            out.extend(_leaves(a, e, f"{name}[{i}]"))
        return out
    if actual is None and expected is not None:
        raise CheckFailed(f"{name} is None: did you forget the `return` statement?")
    return [(name, actual, expected)]


def _is_token_list(value: Any) -> bool:
    """A list of Python ints, such as a sentence of token ids."""
    return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)


def _short(values: Sequence[Any], limit: int = 200) -> str:
    text = repr(list(values))
    return text if len(text) <= limit else text[:limit] + "...]"


def _compare_token_list(name: str, actual: Any, expected: list[int]) -> None:
    """Raise :class:`CheckFailed` unless ``actual`` is the same sequence of ints as ``expected``."""
    if isinstance(actual, torch.Tensor):
        actual = actual.tolist()
    if not isinstance(actual, list | tuple):
        raise CheckFailed(f"{name} should be a list of ints but is a {type(actual).__name__}.")
    actual = list(actual)
    if actual == expected:
        return
    match = re.search(r"\[(\d+)\]$", name)
    label = f"{name} (sentence {match.group(1)})" if match else name
    if len(actual) != len(expected):
        raise CheckFailed(f"{label} has {len(actual)} tokens, expected {len(expected)}:\n"
                          f"  yours:    {_short(actual)}\n  expected: {_short(expected)}")
    where = next(i for i, (a, e) in enumerate(zip(actual, expected, strict=True)) if a != e)
    raise CheckFailed(f"{label} differs first at token {where}: you have {actual[where]!r}, expected "
                      f"{expected[where]!r}:\n  yours:    {_short(actual)}\n  expected: {_short(expected)}")


def _close(actual: Any, expected: Any, atol: float, rtol: float) -> bool:
    """True when :func:`compare` would accept ``actual``: same structure, shapes, dtypes and values.

    Dtypes count as they do there: a mask of 0/1 ints or floats is not close to a boolean mask,
    nor an int32 tensor to an int64 one; floating-point tensors of any precision are compared by value.
    """
    try:
        for leaf_name, a, e in _leaves(actual, expected, "x"):
            _compare_leaf(leaf_name, a, e, None, atol, rtol)
    except CheckFailed:
        return False
    return True


def _order_hint(leaf_name: str, actual: Any, leaves: list[tuple[str, Any, Any]], atol: float, rtol: float) -> str:
    """A hint when a returned value equals another expected one (values returned in the wrong order)."""
    for other_name, _, e in leaves:
        if other_name != leaf_name and _close(actual, e, atol, rtol):
            return f"\n  {leaf_name} looks like {other_name} should: check the order of the values you return."
    return ""


def compare(
    actual: Any,
    expected: Any,
    name: str = "output",
    dims: Mapping[str, Sequence[str]] | Sequence[str] | None = None,
    atol: float = 1e-5,
    rtol: float = 1e-4,
) -> None:
    """Raise :class:`CheckFailed` describing the first difference between two (nested) outputs.

    ``dims`` names the dimensions, either one sequence for a single tensor or a mapping from the
    part's name (``"output[1]"``) to a sequence.
    """
    leaves = _leaves(actual, expected, name)
    for leaf_name, a, e in leaves:
        try:
            _compare_leaf(leaf_name, a, e, dims, atol, rtol)
        except CheckFailed as failure:
            raise CheckFailed(f"{failure}{_order_hint(leaf_name, a, leaves, atol, rtol)}") from None


def _compare_leaf(leaf_name, a, e, dims, atol, rtol) -> None:
    if _is_token_list(e):
        _compare_token_list(leaf_name, a, e)
        return
    if not isinstance(e, torch.Tensor):
        if a != e:
            raise CheckFailed(f"{leaf_name} is {a!r} but {e!r} was expected.")
        return
    leaf_dims = dims.get(leaf_name) if isinstance(dims, Mapping) else dims
    expect_shape(a, tuple(e.shape), leaf_name, leaf_dims)
    if e.dtype == torch.bool:
        if a.dtype != torch.bool:
            raise CheckFailed(f"{leaf_name} should be a boolean tensor but has dtype {a.dtype}.")
        if not torch.equal(a, e):
            where = (a != e).nonzero()[0].tolist()
            raise CheckFailed(
                f"{leaf_name} differs from the expected mask, first at index {where}: "
                f"got {a[tuple(where)].item()}, expected {e[tuple(where)].item()}."
            )
        return
    if e.is_floating_point() != a.is_floating_point() or (not e.is_floating_point() and a.dtype != e.dtype):
        raise CheckFailed(f"{leaf_name} has dtype {a.dtype} but {e.dtype} was expected.")
    if not e.is_floating_point():
        if not torch.equal(a, e):
            where = (a != e).nonzero()[0].tolist()
            raise CheckFailed(
                f"{leaf_name} has the right shape but wrong values: first at index {where} you have "
                f"{a[tuple(where)].item()}, expected {e[tuple(where)].item()}."
            )
        return
    a_cmp = a.detach().to(e.dtype)
    if torch.isnan(a_cmp).any() and not torch.isnan(e).any():
        raise CheckFailed(f"{leaf_name} contains NaN where the reference has none.")
    if not torch.allclose(a_cmp, e, atol=atol, rtol=rtol, equal_nan=True):
        diff = (a_cmp - e).abs().nan_to_num(nan=math.inf)
        idx = tuple(torch.unravel_index(diff.argmax(), diff.shape))
        idx_list = [int(i) for i in idx]
        raise CheckFailed(
            f"{leaf_name} has the right shape but wrong values: at index {idx_list} you "
            f"have {a_cmp[idx].item():.6g}, expected {e[idx].item():.6g} "
            f"(largest difference {diff.max().item():.3g})."
        )


def explain_crashes(
    student: Callable[..., Any],
    name: str,
    hint: str = "",
    *,
    index_hint: str = "",
    hint_for: Callable[[Exception], str] | None = None,
    explain_not_implemented: bool = False,
) -> Callable[..., Any]:
    """Wrap ``student`` so that a crash inside it becomes a :class:`CheckFailed` that says what to look at.

    The message names the error and the input shapes, then adds ``hint``; ``index_hint`` when the
    crash is an index out of range (nearly always an off-by-one here); and whatever ``hint_for(error)``
    returns for this particular error. ``NotImplementedError`` (an exercise not done yet) passes
    through unchanged, or, with ``explain_not_implemented``, becomes a CheckFailed saying so.
    """

    @functools.wraps(student)
    def guarded(*inputs):
        try:
            return student(*inputs)
        except NotImplementedError:
            if explain_not_implemented:
                raise CheckFailed(f"{name} is not written yet: replace `raise NotImplementedError()`.") from None
            raise
        except CheckFailed:
            raise
        except (RuntimeError, IndexError, ValueError, TypeError) as error:
            shapes = ", ".join(str(tuple(v.shape)) for v in inputs if isinstance(v, torch.Tensor))
            extra = f"\n{index_hint}" if index_hint and _index_out_of_range(error) else ""
            extra += hint_for(error) if hint_for is not None else ""
            tail = f"\n{hint}" if hint else ""
            where = f" on inputs {shapes}" if shapes else ""
            raise CheckFailed(f"{name} raised {type(error).__name__}{where}:\n  {error}{extra}{tail}") from None

    return guarded


def explain_crashes_and_unwritten(student: Callable[..., Any], name: str, hint: str = "",
                                  index_hint: str = "") -> Callable[..., Any]:
    """:func:`explain_crashes` that also reports an exercise not written yet (``NotImplementedError``)."""
    return explain_crashes(student, name, hint, index_hint=index_hint, explain_not_implemented=True)


def padded_mask(generator: torch.Generator, batch: int, length: int) -> torch.Tensor:
    """A random padding mask (batch, length), True at real tokens, as a padded batch has.

    The first sentence fills the batch (the longest one sets the length) and the last is padded.
    """
    lengths = torch.randint(1, length + 1, (batch,), generator=generator)
    lengths[0] = length
    lengths[-1] = max(1, length - 2)
    return torch.arange(length)[None, :] < lengths[:, None]


def _index_out_of_range(error: Exception) -> bool:
    """An IndexError for an index past the end ("index 5 is out of bounds", "list index out of range"),
    not for a dimension that does not exist or an index tensor of the wrong dtype."""
    message = str(error).lower()
    return isinstance(error, IndexError) and "dimension out of range" not in message \
        and ("out of bounds" in message or "out of range" in message)


@dataclass(frozen=True)
class Mistake:
    """A wrong implementation written on purpose, so that a check can recognise it.

    ``implementation`` has the reference's signature; ``advice`` says what went wrong and how to
    fix it, in words a student can act on.
    """

    advice: str
    implementation: Callable[..., Any]


def _clone_inputs(inputs: Mapping[str, Any]) -> dict[str, Any]:
    return {k: copy.deepcopy(v) for k, v in inputs.items()}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape \
            and torch.equal(a, b)
    return a == b


def _describe_inputs(inputs: Mapping[str, Any]) -> str:
    parts = []
    for key, value in inputs.items():
        if isinstance(value, torch.Tensor):
            parts.append(f"{key}: shape {describe_shape(tuple(value.shape))}")
        else:
            text = repr(value)
            parts.append(f"{key} = {text if len(text) <= 200 else text[:200] + '...'}")
    return ", ".join(parts)


def check_against(
    student: Callable[..., Any],
    reference: Callable[..., Any],
    make_inputs: Callable[[torch.Generator], Mapping[str, Any]],
    *,
    name: str,
    trials: int = 5,
    mistakes: Sequence[Mistake] = (),
    dims: Mapping[str, Sequence[str]] | Sequence[str] | None = None,
    atol: float = 1e-5,
    rtol: float = 1e-4,
    seed: int = 0,
    quiet: bool = False,
    confirm_mistakes: bool = False,
    mistake_atol: float | None = None,
    hint: Callable[[Any, Any, Mapping[str, Any]], str | None] | None = None,
) -> None:
    """Compare ``student`` with ``reference`` on ``trials`` random inputs.

    ``make_inputs(generator)`` returns the arguments as an ordered dict (name: value); they are
    passed by position, so the student may name parameters differently. Each trial gets fresh
    inputs, so an answer that only works for one shape cannot pass. Inputs are cloned for each
    call, and a student function that modifies its inputs in place is reported.

    ``confirm_mistakes``: name a known mistake only if the student's output also matches it on a
    second, fresh input on which that mistake differs from the reference (other sizes), so that a
    coincidence on one input (two sizes that happen to be equal) names nothing.
    ``mistake_atol``: the tolerance for recognising a mistake (``atol`` unless given), looser when
    the student's rounding may differ from the mistake's by more than ``atol`` (large angles in
    float32, say). With ``confirm_mistakes``, the second input must then be one on which the mistake
    differs from the reference by more than ``2 * mistake_atol``, so that an answer within
    ``mistake_atol`` of the mistake is closer to it than to the reference.
    ``hint(actual, expected, inputs)`` may add a line of explanation to a failure (for example
    which property of the output is broken); it is shown whether or not a mistake is named.
    """
    loose = atol if mistake_atol is None else mistake_atol
    distinct = atol if mistake_atol is None else 2 * mistake_atol
    generator = torch.Generator().manual_seed(seed)
    for trial in range(trials):
        inputs = make_inputs(generator)
        expected = reference(*_clone_inputs(inputs).values())
        given = _clone_inputs(inputs)
        actual = student(*given.values())
        for key, value in given.items():
            if not _same(value, inputs[key]):
                raise CheckFailed(
                    f"{name} changed its input {key!r} in place. Leave the inputs as they are and "
                    f"build new objects (for example `x = x + 1` rather than `x += 1`, or a new list "
                    f"rather than `.append` on an input)."
                )
        try:
            compare(actual, expected, name=f"{name}(...)", dims=dims, atol=atol, rtol=rtol)
        except CheckFailed as failure:
            context = f"\n(trial {trial + 1} of {trials}; inputs: {_describe_inputs(inputs)})"
            extra = _hint_text(hint, actual, expected, inputs)
            for mistake in mistakes:
                try:
                    buggy = mistake.implementation(*_clone_inputs(inputs).values())
                except Exception:  # a mistake that cannot run on these inputs is not the one
                    continue
                if _close(buggy, expected, atol, rtol) or not _close(actual, buggy, loose, rtol):
                    continue  # harmless on these inputs (it matches the reference), or not this answer's bug
                if confirm_mistakes and not _matches_again(
                    student, reference, make_inputs, generator, mistake, loose, distinct, rtol
                ):
                    continue
                raise CheckFailed(
                    f"{failure}{extra}\nLikely cause: {mistake.advice}{context}"
                ) from None
            raise CheckFailed(f"{failure}{extra}{context}") from None
    if not quiet:
        print(f"✓ {name}: matches the reference on {trials} random inputs.")


def _hint_text(hint, actual, expected, inputs) -> str:
    if hint is None:
        return ""
    try:
        text = hint(actual, expected, inputs)
    except Exception:  # a hint is a bonus: never let it hide the failure itself
        return ""
    return f"\n{text}" if text else ""


def _matches_again(student, reference, make_inputs, generator, mistake, atol, distinct, rtol,
                   attempts: int = 8) -> bool:
    """Does ``student`` match ``mistake`` (within ``atol``) on a fresh input where the mistake shows?

    Draws up to ``attempts`` new inputs and uses the first on which the mistake's output differs
    from the reference's by more than ``distinct`` (an input on which the mistake is harmless, or
    too close to the reference to tell them apart, would confirm nothing).
    """
    for _ in range(attempts):
        inputs = make_inputs(generator)
        try:
            buggy = mistake.implementation(*_clone_inputs(inputs).values())
        except Exception:
            continue
        expected = reference(*_clone_inputs(inputs).values())
        if _close(buggy, expected, distinct, rtol):
            continue
        try:
            actual = student(*_clone_inputs(inputs).values())
        except Exception:
            return False
        return _close(actual, buggy, atol, rtol)
    return False
