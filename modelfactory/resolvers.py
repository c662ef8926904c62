"""Arithmetic in configs: the ``mf.calc`` resolver, safe (it never calls ``eval``).

Model configs compute sizes from their knobs::

    d_ff: ${mf.calc:4 * ${d_model}}
    head_dim: ${mf.calc:${d_model} / ${n_head}}
    n_patches: ${mf.calc:'(${image_size} / ${patch_size}) ** 2'}

The argument is one arithmetic expression over numbers: ``+ - * / // % **``, unary ``-``
and ``+``, and parentheses (OmegaConf's grammar needs an argument with parentheses in
quotes). ``/`` of two integers is exact: ``768 / 12`` is the integer 64, and ``768 / 7``
is an error (a size that does not divide is a config mistake, not a float); write ``//``
to round down, or use a float (``1.0 / 3``) for a fraction. A result is an ``int`` when
every number is; ``bool``s, names, calls and anything else are refused.

:func:`register` makes the resolver known to OmegaConf. modelfactory calls it wherever it
composes (:func:`modelfactory.configs.compose`, the command line) or resolves a config
(:func:`modelfactory.build` and everything that takes a ``DictConfig``); call it yourself
before resolving a config with OmegaConf directly. A checkpoint stores resolved values,
so loading one never needs the resolver.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from typing import Any

__all__ = ["CALC", "calc", "register"]

CALC = "mf.calc"  # the resolver's name: ${mf.calc:...}
MAX_TEXT = 1000  # characters of one expression
MAX_BITS = 4096  # of an integer result (a size is far smaller; this bounds the work)

Number = int | float


def _divide(a: Number, b: Number) -> Number:
    if isinstance(a, int) and isinstance(b, int):
        if b == 0:
            raise ValueError(f"{a} / 0 divides by zero")
        quotient, remainder = divmod(a, b)
        if remainder:
            raise ValueError(
                f"{a} / {b} is not a whole number (a size must divide exactly); write "
                f"{a} // {b} to round down, or {float(a)} / {b} for a fraction"
            )
        return quotient
    return a / b


def _power(a: Number, b: Number) -> Number:
    if isinstance(a, int) and isinstance(b, int):
        if b < 0:
            raise ValueError(f"{a} ** {b}: a negative integer power is a fraction")
        if abs(a) > 1 and b * abs(a).bit_length() > MAX_BITS:
            raise ValueError(f"{a} ** {b} is too large (over {MAX_BITS} bits)")
    result = a**b
    if isinstance(result, complex):
        raise ValueError(f"({a}) ** {b} is not a real number")
    return result


_BINARY: dict[type, Callable[[Any, Any], Number]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: _divide,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: _power,
}
_UNARY: dict[type, Callable[[Any], Number]] = {ast.USub: operator.neg, ast.UAdd: operator.pos}
_ALLOWED = "numbers, + - * / // % ** and parentheses"


def calc(expression: str | int | float) -> int | float:
    """The value of one arithmetic expression (see the module docstring).

    Args:
        expression: such as ``"4 * 768"`` or ``"(224 / 16) ** 2"``; a number is returned as
            it is.

    Raises:
        ValueError: the text is not such an expression, or its value is not defined (a
            division that does not come out whole, by zero, a huge power); the message
            quotes the expression.
    """
    if isinstance(expression, (int, float)) and not isinstance(expression, bool):
        return expression
    if not isinstance(expression, str):
        raise ValueError(f"expected an arithmetic expression, got {type(expression).__name__}")
    if len(expression) > MAX_TEXT:
        raise ValueError(f"expression of {len(expression)} characters (at most {MAX_TEXT})")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
        value = _value(tree.body, expression)
    except SyntaxError as e:
        raise ValueError(f"{expression!r} is not an arithmetic expression ({e.msg})") from e
    except RecursionError as e:
        raise ValueError(f"{expression!r} nests too deeply") from e
    except OverflowError as e:
        raise ValueError(f"{expression!r} is too large ({e})") from e
    except (ArithmeticError, ValueError) as e:  # ZeroDivisionError, ours
        raise ValueError(f"{expression!r}: {e}") from e
    if isinstance(value, int) and value.bit_length() > MAX_BITS:
        raise ValueError(f"{expression!r} is too large (over {MAX_BITS} bits)")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{expression!r} is not a finite number ({value})")
    return value


def _value(node: ast.AST, text: str) -> Number:
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise ValueError(f"{node.value!r} is not a number")
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _value(node.left, text), _value(node.right, text)
        return _BINARY[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_value(node.operand, text))
    if isinstance(node, ast.Name):
        raise ValueError(
            f"{node.id!r} is a name; an expression holds numbers only (write ${{{node.id}}} "
            "to use a knob)"
        )
    what = ast.get_source_segment(text, node) or type(node).__name__
    raise ValueError(f"{what!r} is not allowed; an expression holds {_ALLOWED}")


def _resolver(*args: Any) -> int | float:
    if len(args) != 1:
        raise ValueError(
            f"${{{CALC}:...}} takes one expression, got {len(args)} arguments (a ',' "
            "separates arguments: write the whole expression in quotes if it needs one)"
        )
    return calc(args[0])


def register() -> None:
    """Make ``${mf.calc:...}`` known to OmegaConf (once per process; later calls do nothing).

    A resolver of that name registered by someone else is left as it is.
    """
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver(CALC):
        OmegaConf.register_new_resolver(CALC, _resolver)
