"""The machinery behind every exercise check.

A check runs the student's function and the package's reference on the same fresh random inputs
and compares the results. When they differ it does not stop at "wrong": it says which dimension
of which output has the wrong size, or, when the values differ, whether the student's output
matches one of the *known mistakes* for that exercise (a buggy implementation written on purpose,
such as "softmax over the wrong axis"), and names it.

Checks raise :class:`CheckFailed` (an AssertionError, so nbgrader and pytest count it as a
failure) and print one line when they pass. Every call of the student's code goes through
:func:`explain_crashes` or :func:`check_against`, which make grading fair in three ways:

* a crash, or an exercise not written yet, becomes a :class:`CheckFailed` that says what happened,
  and Jupyter (and nbgrader's feedback) shows a failed check as its message alone, without a
  traceback through the checks' internals;
* a warning raised by the student's code is shown on standard output as advice, never on standard
  error, where nbgrader would fail the cell; warnings from the checks' own code are silenced;
* an answer that runs the package's own answer to the exercise (imports it, wraps it, or builds the
  package's class) is refused, even though its numbers match.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib
import inspect
import math
import os
import re
import sys
import sysconfig
import traceback
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch


class CheckFailed(AssertionError):
    """An exercise answer disagrees with the reference. The message says how."""

    def _render_traceback_(self) -> list[str]:
        """How IPython (Jupyter, and so nbgrader's feedback) shows a failed check: the diagnosis alone.

        The frames of the checks' internals say nothing to a student; the message says what is wrong.
        Outside IPython (pytest, a script) the usual traceback is shown.
        """
        lines = str(self).splitlines() or [""]
        return [f"\x1b[0;31m{type(self).__name__}\x1b[0m: {lines[0]}", *lines[1:]]


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
    if a.device != e.device:
        raise CheckFailed(f"{leaf_name} is on the device {a.device}, but the inputs are on {e.device}: create new "
                          f"tensors on the inputs' device (e.g. `torch.arange(n, device=x.device)`) and do not "
                          f"move the result with `.to(...)` or `.cuda()`.")
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
    explain_not_implemented: bool = True,
) -> Callable[..., Any]:
    """Wrap ``student`` so that a crash inside it becomes a :class:`CheckFailed` that says what to look at.

    The message names the error, the input shapes and the line of the student's code that raised
    it, then adds ``hint``; ``index_hint`` when the crash is an index out of range (nearly always
    an off-by-one here); and whatever ``hint_for(error)`` returns for this particular error. The
    stub's bare ``raise NotImplementedError()`` becomes the same one-line "not written yet" in every
    lesson (``explain_not_implemented`` is kept for older callers and changes nothing). Each call
    runs as :func:`student_code`: its warnings become advice on standard output.
    """
    del explain_not_implemented  # an unwritten exercise reads the same in every lesson

    @functools.wraps(student)
    def guarded(*inputs):
        try:
            with student_code(name):
                return student(*inputs)
        except CheckFailed:
            raise
        except NotImplementedError as error:
            if not str(error):  # the stub's `raise NotImplementedError()`, not an operation PyTorch lacks
                raise CheckFailed(not_written_yet(name)) from None
            raise _crash(error, inputs, name, hint, index_hint, hint_for) from None
        except Exception as error:  # noqa: BLE001 (every crash of the student's code is explained)
            raise _crash(error, inputs, name, hint, index_hint, hint_for) from None

    return guarded


def explain_crashes_and_unwritten(student: Callable[..., Any], name: str, hint: str = "",
                                  index_hint: str = "") -> Callable[..., Any]:
    """:func:`explain_crashes` (which now reports an unwritten exercise too), kept under its older name."""
    return explain_crashes(student, name, hint, index_hint=index_hint)


def not_written_yet(name: str) -> str:
    """The message for an exercise still holding its stub, the same in every lesson."""
    return (f"{name.split('(')[0]} is not written yet: replace `raise NotImplementedError()` with your code, "
            f"then run that cell and this one again.")


def _crash(error: Exception, inputs: Sequence[Any], name: str, hint: str, index_hint: str,
           hint_for: Callable[[Exception], str] | None) -> CheckFailed:
    shapes = ", ".join(str(tuple(v.shape)) for v in inputs if isinstance(v, torch.Tensor))
    extra = f"\n{index_hint}" if index_hint and _index_out_of_range(error) else ""
    extra += hint_for(error) if hint_for is not None else ""
    tail = f"\n{hint}" if hint else ""
    where = f" on inputs {shapes}" if shapes else ""
    return CheckFailed(f"{name} raised {type(error).__name__}{where}{_student_line(error)}:\n  {error}{extra}{tail}")


def _library_folders() -> tuple[str, ...]:
    """Folders whose code is not the student's: this package, PyTorch, the standard library, installed packages."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    paths = sysconfig.get_paths()
    folders = {package, os.path.dirname(torch.__file__), paths["stdlib"], paths["platstdlib"], paths["purelib"],
               paths["platlib"]}
    return tuple(os.path.join(folder, "") for folder in folders)


def _student_line(error: Exception) -> str:
    """Where in the student's own code ``error`` was raised (the innermost frame outside the libraries), or ""."""
    ours = _library_folders()
    frames = [f for f in traceback.extract_tb(error.__traceback__)
              if not os.path.abspath(f.filename).startswith(ours) and not f.filename.startswith("<frozen")]
    if not frames:
        return ""
    frame = frames[-1]
    code = f" (`{frame.line.strip()}`)" if frame.line else ""
    return f" at line {frame.lineno} of {frame.name}{code}"


def _warnings_on_stdout_when_grading() -> None:
    """Under nbgrader (``autograde`` and ``validate`` set ``NBGRADER_EXECUTION`` for the kernel), show every
    warning on standard output: a graded cell's hidden tests may call the student's function directly,
    outside a check, and a warning there would otherwise cost the exercise its points."""
    if not os.environ.get("NBGRADER_EXECUTION"):
        return

    def show(message, category, filename, lineno, file=None, line=None):
        sys.stdout.write(warnings.formatwarning(message, category, filename, lineno, line))

    warnings.showwarning = show


_warnings_on_stdout_when_grading()

_ADVISED: set[tuple[str, str]] = set()  # the warnings already shown during this check (cleared by check_against)
_DEPTH = [0]  # how many check_against calls are running (they may nest)


@contextlib.contextmanager
def student_code(name: str) -> Iterator[None]:
    """Run the student's code so that nothing it prints or warns reaches standard error.

    nbgrader gives 0 points to a graded cell that writes to standard error, so a right answer
    that triggers a warning (a deprecated PyTorch argument, say) would score nothing. Its
    warnings are shown instead on standard output, once each per check, as advice, and whatever
    it writes to ``sys.stderr`` goes to standard output.
    """
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stderr(sys.stdout):
        warnings.simplefilter("always")
        try:
            yield
        finally:
            for warning in caught:
                key = (warning.category.__name__, str(warning.message))
                if key not in _ADVISED:
                    _ADVISED.add(key)
                    print(f"Note: {name.split('(')[0]} raised a warning. It does not count against your "
                          f"answer, but read it: {key[0]}: {key[1]}")


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
    forbidden: Sequence[Callable[..., Any]] = (),
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
    ``forbidden``: more of the package's own answers to this exercise (functions, or methods such
    as ``EncoderLayer.forward``), besides the reference itself when it is a function of the package
    (not of the checks) and those :data:`PACKAGE_ANSWERS` lists under ``name``. An answer that runs
    one of them while it is checked (it is the package's function, a wrapper of it, or the
    package's class) is refused once its values pass.

    Warnings raised by the reference, the known mistakes and the hints are silenced; the student's
    are shown as advice (:func:`student_code`).
    """
    if not _DEPTH[0]:
        _ADVISED.clear()
    _DEPTH[0] += 1
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the checks' own warnings are not the student's business
            _check_against(student, reference, make_inputs, name=name, trials=trials, mistakes=mistakes, dims=dims,
                           atol=atol, rtol=rtol, seed=seed, confirm_mistakes=confirm_mistakes,
                           mistake_atol=mistake_atol, hint=hint,
                           forbidden=_forbidden_codes(name, reference, forbidden))
    finally:
        _DEPTH[0] -= 1
        if not _DEPTH[0]:
            _ADVISED.clear()
    if not quiet:
        print(f"✓ {name}: matches the reference on {trials} random inputs.")


def _check_against(student, reference, make_inputs, *, name, trials, mistakes, dims, atol, rtol, seed,
                   confirm_mistakes, mistake_atol, hint, forbidden) -> None:
    loose = atol if mistake_atol is None else mistake_atol
    distinct = atol if mistake_atol is None else 2 * mistake_atol
    generator = torch.Generator().manual_seed(seed)
    used: list[str] = []  # the package's answers the student's code ran
    for trial in range(trials):
        inputs = make_inputs(generator)
        expected = reference(*_clone_inputs(inputs).values())
        given = _clone_inputs(inputs)
        with student_code(name), _watching(forbidden, used):
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
    if used and used[0].startswith("transformer_lesson."):
        raise CheckFailed(
            f"{name} runs the package's own answer, {used[0]}: this exercise asks you to write it yourself. "
            f"Replace that call (or import, or class) with your own code; PyTorch's operations are fine."
        )
    if used:
        raise CheckFailed(
            f"{name} runs PyTorch's ready-made version of this exercise, {used[0]}: the exercise asks you to "
            f"build it yourself from PyTorch's basic operations (matrix products, softmax, tanh, ...). "
            f"Replace that call with your own code."
        )


def _code_and_name(item: Callable[..., Any]) -> tuple[Any, str] | None:
    """The code object that runs when ``item`` (a function, method or partial) is called, and its full name."""
    function = item.func if isinstance(item, functools.partial) else item
    function = inspect.unwrap(getattr(function, "__func__", function))  # a bound method; a decorator's wrapper
    code = getattr(function, "__code__", None)
    if code is None:
        return None
    return code, f"{function.__module__}.{function.__qualname__}"


# The package's own answer to each exercise whose check compares with a reference of its own (by
# the check's name). An exercise whose reference IS the package's function needs no line here.
PACKAGE_ANSWERS: dict[str, tuple[str, ...]] = {
    "rnn_cell": ("transformer_lesson.rnn.rnn_cell",),
    "sequence_loss": ("transformer_lesson.training.sequence_loss",),
    "greedy_decode": ("transformer_lesson.decoding.greedy_decode",),
    "penalised_scores": ("transformer_lesson.decoding.length_penalty",),
    "attention_step": ("transformer_lesson.rnn_attention.AttentionGRUDecoder.step",),
    "bucket_batches": ("transformer_lesson.batching.token_budget_batches",),
    "attention": ("transformer_lesson.attention.scaled_dot_product_attention",
                  "transformer_lesson.attention._attention", "transformer_lesson.attention._fast_attention"),
    "padding_mask_from_lengths": ("transformer_lesson.batching.padding_mask",),
    "project_heads": ("transformer_lesson.multihead.MultiHeadAttention.project",),
    "multi_head_attention": ("transformer_lesson.multihead.MultiHeadAttention.forward",
                             "transformer_lesson.multihead.MultiHeadAttention.attend",
                             "transformer_lesson.multihead.MultiHeadAttention._attend_heads"),
    "add_learned_positions": ("transformer_lesson.positional.LearnedPositionalEmbedding.forward",),
    "feed_forward": ("transformer_lesson.transformer.FeedForward.forward",),
    "embed": ("transformer_lesson.transformer.ScaledEmbedding.forward",),
    "encoder_layer": ("transformer_lesson.transformer.EncoderLayer.forward",),
    "decoder_layer": ("transformer_lesson.transformer.DecoderLayer.forward",
                      "transformer_lesson.transformer.DecoderLayer._self_attend",
                      "transformer_lesson.transformer.DecoderLayer._cross_attend"),
    "count_parameters": tuple(f"transformer_lesson.{name}.__init__" for name in (  # "count, do not build"
        "transformer.Transformer", "transformer.Encoder", "transformer.Decoder", "transformer.EncoderLayer",
        "transformer.DecoderLayer", "transformer.FeedForward", "transformer.ScaledEmbedding",
        "multihead.MultiHeadAttention")),
}


# PyTorch's ready-made version of an exercise, refused like the package's own (by the check's name).
# Only where the built-in IS the exercise: PyTorch's basic operations (and, in later lessons, the
# package's earlier building blocks, whose own code may call these) stay allowed.
PYTORCH_ANSWERS: dict[str, tuple[str, ...]] = {
    "rnn_cell": ("torch.rnn_tanh_cell", "torch.nn.RNNCell.forward"),
    "attention": ("torch.nn.functional.scaled_dot_product_attention",),
    "multi_head_attention": ("torch.nn.MultiheadAttention.forward",
                             "torch.nn.functional.multi_head_attention_forward"),
    "encoder_layer": ("torch.nn.TransformerEncoderLayer.forward",),
    "decoder_layer": ("torch.nn.TransformerDecoderLayer.forward",),
}


def resolve(dotted: str) -> Any:
    """The object a dotted name such as ``"transformer_lesson.transformer.EncoderLayer.forward"`` names."""
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:split]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[split:]:
            found = getattr(found, attribute)
        return found
    raise ModuleNotFoundError(dotted)


def _forbidden_codes(name: str, reference: Callable[..., Any], forbidden: Sequence[Callable[..., Any]]
                     ) -> dict[int, str]:
    """{id(code object): full name} of the package's answers that the student's code must not run, and
    {id(built-in function): its dotted name} of PyTorch's ready-made versions (:data:`PYTORCH_ANSWERS`)."""
    items = [*forbidden, *(resolve(dotted) for dotted in PACKAGE_ANSWERS.get(name, ()))]
    found = _code_and_name(reference)
    if found and found[1].startswith("transformer_lesson.") and not found[1].startswith("transformer_lesson.checks."):
        items.append(reference)
    codes = {}
    for item in items:
        found = _code_and_name(item)
        if found is None:
            raise TypeError(f"forbidden: {item!r} is not a Python function or method")
        codes[id(found[0])] = found[1]
    for dotted in PYTORCH_ANSWERS.get(name, ()):
        item = resolve(dotted)
        found = _code_and_name(item)
        codes[id(found[0]) if found else id(item)] = dotted  # a Python method, or a built-in (C) function
    return codes


@contextlib.contextmanager
def _watching(codes: Mapping[int, str], used: list[str]) -> Iterator[None]:
    """Append to ``used`` the names of the functions in ``codes`` that start running inside the ``with`` block.

    Uses a profile function (:func:`sys.setprofile`, chained to any already set), so that it sees
    the package's function however the student reached it: imported under another name, wrapped,
    or run by a method of the package's class.
    """
    if not codes:
        yield
        return
    previous = sys.getprofile()

    def profile(frame, event, arg):
        if event == "call" and id(frame.f_code) in codes:
            used.append(codes[id(frame.f_code)])
        elif event == "c_call" and id(arg) in codes:  # a built-in function, called from Python code
            used.append(codes[id(arg)])
        if previous is not None:
            previous(frame, event, arg)

    sys.setprofile(profile)
    try:
        yield
    finally:
        sys.setprofile(previous)


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
