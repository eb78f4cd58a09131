"""The small argument checks every layer needs, in one place: integers, numbers, flags, callables and tensors.

Each check returns the value it accepted (normalized: an ``int``, a ``float``, a
tensor) or raises an error that names the argument, what was expected and what
was given. ``where`` names the function the argument belongs to, for messages
such as ``sliding_window: window must be a positive int, got 0``; without it the
message starts with the argument, ``max_len: expected a positive int, got 0``.
``error`` is the exception class to raise (`qkv.AttentionError` by default;
model loaders pass `qkv.models.ModelError`).

This module sits at the bottom of the library: it imports torch and
`qkv.errors`, nothing else of qkv.

>>> from qkv import checks
>>> checks.integer("heads", 8, minimum=1)
8
>>> checks.integer("window", 0, minimum=1, where="sliding_window")
Traceback (most recent call last):
...
qkv.errors.AttentionError: sliding_window: window must be a positive int, got 0
>>> import torch
>>> checks.shape_of(torch.zeros(2, 3))
'(2, 3)'
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Sequence

import torch
from torch import Tensor

from qkv.errors import AttentionError

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
"""The dtypes attention computes in."""

ErrorType = type[AttentionError]


def shape_of(t: Tensor) -> str:
    """A tensor's shape as messages print it: ``(2, 3)``, ``(4,)``, ``()``.

    >>> shape_of(torch.zeros(4))
    '(4,)'
    """
    return str(tuple(t.shape))


def string(name: str, value: object, *, empty: str | None = None, error: ErrorType = AttentionError) -> str:
    """``value`` if it is a str; with ``empty`` (the way out a message offers) also refused when blank.

    >>> from qkv.errors import ModelError
    >>> string("text", " ", empty="give a sentence to look at", error=ModelError)
    Traceback (most recent call last):
    ...
    qkv.errors.ModelError: text: expected some text, got an empty string; give a sentence to look at
    """
    if not isinstance(value, str):
        raise error(f"{name}: expected a str, got {type(value).__name__}")
    if empty is not None and not value.strip():
        raise error(f"{name}: expected some text, got an empty string; {empty}")
    return value


def _fail(where: str | None, name: str, expected: str, got: str, error: ErrorType, verb: str = "be") -> AttentionError:
    """The one message shape: ``where: name must be ..., got ...`` or ``name: expected ..., got ...``."""
    if where:
        return error(f"{where}: {name} must {verb} {expected}, got {got}")
    return error(f"{name}: expected {expected}, got {got}")


def integer(
    name: str, value: object, *, minimum: int = 0, where: str | None = None, error: ErrorType = AttentionError
) -> int:
    """An integer ``>= minimum``: Python ints and 0-d integer tensors; bools and floats refused.

    >>> integer("radius", 0)
    0
    >>> integer("num_heads", 2.5, minimum=1)
    Traceback (most recent call last):
    ...
    qkv.errors.AttentionError: num_heads: expected a positive int, got float 2.5
    """
    expected = "a positive int" if minimum == 1 else f"an int >= {minimum}"
    try:
        if isinstance(value, bool):
            raise TypeError
        number = operator.index(value)  # type: ignore[arg-type]  # refused below if it is no integer
    except TypeError:
        raise _fail(where, name, expected, f"{type(value).__name__} {value!r}", error) from None
    if number < minimum:
        raise _fail(where, name, expected, str(number), error)
    return number


def positive_number(name: str, value: object, *, where: str | None = None, error: ErrorType = AttentionError) -> float:
    """A finite real number ``> 0`` as a float (bools refused).

    >>> positive_number("cap", 30)
    30.0
    >>> positive_number("t", float("inf"), where="temperature")
    Traceback (most recent call last):
    ...
    qkv.errors.AttentionError: temperature: t must be a positive finite number, got inf
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _fail(where, name, "a positive number", f"{type(value).__name__} {value!r}", error)
    number = float(value)
    if not (math.isfinite(number) and number > 0):
        raise _fail(where, name, "a positive finite number", str(number), error)
    return number


def sampling(temperature: object, top_k: object, top_p: object, *, error: ErrorType = AttentionError) -> None:
    """How a decoder draws its next token: ``temperature`` a finite number ``>= 0`` (0 is greedy),
    ``top_k`` None or a positive int, ``top_p`` None or a number in ``(0, 1]``.

    >>> sampling(0.7, 50, 0.9)
    >>> sampling(float("inf"), None, None)
    Traceback (most recent call last):
    ...
    qkv.errors.AttentionError: temperature: expected a number >= 0 (0 is greedy), got inf
    """
    number = isinstance(temperature, numbers.Real) and not isinstance(temperature, bool)
    if not (number and math.isfinite(float(temperature)) and float(temperature) >= 0):  # type: ignore[arg-type]
        raise error(f"temperature: expected a number >= 0 (0 is greedy), got {temperature!r}")
    if top_k is not None:
        integer("top_k", top_k, minimum=1, error=error)
    if top_p is not None and (
        isinstance(top_p, bool) or not isinstance(top_p, numbers.Real) or not 0 < float(top_p) <= 1
    ):
        raise error(f"top_p: expected None or a number in (0, 1], got {top_p!r}")


def flag(
    name: str, value: object, *, hint: str = "", where: str | None = None, error: ErrorType = AttentionError
) -> bool:
    """``True`` or ``False`` (not 0/1, not None); ``hint`` is appended to the message.

    >>> flag("causal", 1, hint="a custom pattern goes in mask=...")
    Traceback (most recent call last):
    ...
    qkv.errors.AttentionError: causal: expected True or False, got int; a custom pattern goes in mask=...
    """
    if not isinstance(value, bool):
        raise _fail(where, name, "True or False", type(value).__name__ + (f"; {hint}" if hint else ""), error)
    return value


def callable_arg(name: str, fn: object, signature: str, *, where: str | None = None) -> None:
    """Nothing if ``fn`` is callable, else an AttentionError showing the ``signature`` it should have.

    >>> callable_arg("fn", 3, "fn(b, h, q_idx, kv_idx) -> bool tensor", where="from_function")
    Traceback (most recent call last):
    ...
    qkv.errors.AttentionError: from_function: fn must be callable as fn(b, h, q_idx, kv_idx) -> bool tensor, got int
    """
    if not callable(fn):
        raise _fail(where, name, f"callable as {signature}", type(fn).__name__, AttentionError)


def tensor(
    name: str,
    value: object,
    layout: str,
    *,
    dims: int | Sequence[int] | None = None,
    dtypes: Sequence[torch.dtype] | None = None,
    hint: str = "",
    error: ErrorType = AttentionError,
) -> Tensor:
    """A tensor with ``dim()`` in ``dims`` and dtype in ``dtypes`` (None: any); ``layout`` names its axes.

    ``hint`` follows the message of a wrong number of dims (e.g. how to reshape).

    >>> tensor("q", torch.zeros(2, 4, 8), "(B, Hq, Nq, D)", dims=4, dtypes=FLOAT_DTYPES)
    Traceback (most recent call last):
    ...
    qkv.errors.AttentionError: q: expected a 4-D tensor (B, Hq, Nq, D), got shape (2, 4, 8)
    >>> tensor("x", [1.0], "(N,)")
    Traceback (most recent call last):
    ...
    qkv.errors.AttentionError: x: expected a torch.Tensor (N,), got list
    """
    if not isinstance(value, Tensor):
        raise error(f"{name}: expected a torch.Tensor {layout}, got {type(value).__name__}")
    allowed_dims = (dims,) if isinstance(dims, int) else dims
    if allowed_dims is not None and value.dim() not in allowed_dims:
        rank = " or ".join(f"{d}-D" for d in allowed_dims)
        raise error(f"{name}: expected a {rank} tensor {layout}, got shape {shape_of(value)}{hint}")
    if dtypes is not None and value.dtype not in dtypes:
        names = [str(d).removeprefix("torch.") for d in dtypes]
        listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
        raise error(f"{name}: expected dtype {listed}, got {value.dtype}")
    return value


def bool_tensor(
    name: str, value: object, *, fix: str = "", where: str | None = None, error: ErrorType = AttentionError
) -> Tensor:
    """A bool tensor, True = may attend (the one polarity of qkv); ``fix`` says how to get one from another dtype.

    >>> bool_tensor("mask", torch.ones(2, 2), fix="for 0/1 integers use mask.bool()")
    Traceback (most recent call last):
    ...
    qkv.errors.AttentionError: mask: expected dtype torch.bool (True = may attend), got torch.float32; for 0/1 ...
    """
    if not isinstance(value, Tensor):
        raise _fail(where, name, "a bool tensor (True = may attend)", type(value).__name__, error)
    if value.dtype != torch.bool:
        got = f"{value.dtype}; {fix}" if fix else str(value.dtype)
        raise _fail(where, name, "dtype torch.bool (True = may attend)", got, error, verb="have")
    return value


def same_dtype_and_device(
    name: str, t: Tensor, ref: Tensor, ref_name: str, *, hint: str = "", error: ErrorType = AttentionError
) -> Tensor:
    """``t`` on ``ref``'s dtype and device: qkv promotes no dtype and moves no tensor silently.

    ``hint`` follows the message of a wrong dtype.

    >>> same_dtype_and_device("k", torch.zeros(1, dtype=torch.float64), torch.zeros(1), "q")
    Traceback (most recent call last):
    ...
    qkv.errors.AttentionError: k: dtype torch.float64 differs from q's torch.float32; qkv does not promote ...
    """
    if t.dtype != ref.dtype:
        raise error(
            f"{name}: dtype {t.dtype} differs from {ref_name}'s {ref.dtype}; "
            f"qkv does not promote dtypes silently: convert with {name}.to({ref.dtype})" + (f"; {hint}" if hint else "")
        )
    return same_device(name, t, ref, ref_name, error=error)


def same_device(name: str, t: Tensor, ref: Tensor, ref_name: str, *, error: ErrorType = AttentionError) -> Tensor:
    """``t`` on ``ref``'s device (any dtype)."""
    if t.device != ref.device:
        raise error(f"{name}: on {t.device} but {ref_name} is on {ref.device}; move both to one device")
    return t


def integer_tensor(name: str, value: object, layout: str, *, dims: Sequence[int], where: str | None = None) -> Tensor:
    """An integer tensor (or nested list of ints) with ``dim()`` in ``dims``, as int64 on its device.

    >>> integer_tensor("lengths", [3, 5], "1-D (B,)", dims=(1,))
    tensor([3, 5])
    >>> integer_tensor("lengths", [1.5], "1-D (B,)", dims=(1,), where="padding")
    Traceback (most recent call last):
    ...
    qkv.errors.AttentionError: padding: lengths must hold integers 1-D (B,), got dtype torch.float32
    """
    if not isinstance(value, Tensor):
        try:
            value = torch.as_tensor(value)
            value = value.long() if value.numel() == 0 else value  # [] would read as float32
        except (TypeError, ValueError, RuntimeError):
            raise _fail(
                where, name, f"an integer tensor or list of ints {layout}", type(value).__name__, AttentionError
            ) from None
    if value.dtype == torch.bool or value.is_floating_point() or value.is_complex():
        raise _fail(where, name, f"integers {layout}", f"dtype {value.dtype}", AttentionError, verb="hold")
    if value.dim() not in dims:
        raise _fail(where, name, layout, f"shape {shape_of(value)}", AttentionError)
    return value.long()


__all__ = [
    "FLOAT_DTYPES",
    "bool_tensor",
    "callable_arg",
    "flag",
    "integer",
    "integer_tensor",
    "positive_number",
    "same_device",
    "same_dtype_and_device",
    "shape_of",
    "tensor",
]
