"""A safe evaluator for function strings such as ``sin(3*x0) + abs(x1)`` (``refcert approx --fn``).

The text is parsed with Python's ``ast`` and walked by hand; nothing is ever passed to ``eval``.
Allowed: numbers, the variables x0..x{m-1}, the constants pi and e, ``+ - * / **``, unary ``-``/``+``
and calls of a whitelist of NumPy functions.  Anything else (attribute access, subscripts, other
names, keyword arguments, lambdas, ...) raises ExpressionError naming the offending token.
"""
from __future__ import annotations

import ast
import re

import numpy as np

FUNCTIONS = {"sin": (np.sin, 1), "cos": (np.cos, 1), "tan": (np.tan, 1), "exp": (np.exp, 1),
             "log": (np.log, 1), "sqrt": (np.sqrt, 1), "abs": (np.abs, 1), "tanh": (np.tanh, 1),
             "minimum": (np.minimum, 2), "maximum": (np.maximum, 2)}
CONSTANTS = {"pi": np.pi, "e": np.e}
OPERATORS = {ast.Add: np.add, ast.Sub: np.subtract, ast.Mult: np.multiply, ast.Div: np.divide,
             ast.Pow: np.power}
VARIABLE = re.compile(r"x(0|[1-9][0-9]*)$")


class ExpressionError(ValueError):
    """The function string is not in the allowed language; the message names the offending token."""


def _where(text: str, node) -> str:
    token = ast.get_source_segment(text, node) or type(node).__name__
    return f"{token!r} (column {getattr(node, 'col_offset', 0) + 1})"


def compile_expression(text: str, m: int):
    """``f(X)`` for X of shape (count, m): the expression evaluated row-wise, returning (count,) floats."""
    if not isinstance(text, str) or not text.strip():
        raise ExpressionError("the function string is empty")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as err:
        raise ExpressionError(f"cannot parse {text!r}: {err.msg} at column {err.offset}") from None
    except (RecursionError, MemoryError):
        raise ExpressionError(f"the function string is too deeply nested ({len(text)} characters)") from None
    source = text.strip()

    def build(node):
        if isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
                raise ExpressionError(f"only numbers are allowed as constants, not {_where(source, node)}")
            value = float(node.value)
            return lambda X: np.full(X.shape[0], value)
        if isinstance(node, ast.Name):
            match = VARIABLE.match(node.id)
            if match:
                i = int(match.group(1))
                if i >= m:
                    raise ExpressionError(f"variable {node.id!r} does not exist: the domain has "
                                          f"{m} coordinate(s), x0..x{m - 1}")
                return lambda X: X[:, i]
            if node.id in CONSTANTS:
                value = CONSTANTS[node.id]
                return lambda X: np.full(X.shape[0], value)
            raise ExpressionError(f"unknown name {_where(source, node)}; allowed: x0..x{m - 1}, "
                                  f"{', '.join(CONSTANTS)} and the functions {', '.join(FUNCTIONS)}")
        if isinstance(node, ast.BinOp) and type(node.op) in OPERATORS:
            op, left, right = OPERATORS[type(node.op)], build(node.left), build(node.right)
            return lambda X: op(left(X), right(X))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            operand, sign = build(node.operand), -1.0 if isinstance(node.op, ast.USub) else 1.0
            return lambda X: sign * operand(X)
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
                raise ExpressionError(f"call of {_where(source, node.func)} is not allowed; "
                                      f"allowed functions: {', '.join(FUNCTIONS)}")
            if node.keywords:
                raise ExpressionError(f"keyword arguments are not allowed in {_where(source, node)}")
            fn, arity = FUNCTIONS[node.func.id]
            if len(node.args) != arity:
                raise ExpressionError(f"{node.func.id} takes {arity} argument(s), got {len(node.args)} "
                                      f"in {_where(source, node)}")
            args = [build(arg) for arg in node.args]
            return lambda X: fn(*[a(X) for a in args])
        raise ExpressionError(f"{_where(source, node)} is not allowed (only numbers, x0..x{m - 1}, "
                              f"+ - * / **, and the functions {', '.join(FUNCTIONS)})")

    body = build(tree.body)

    def f(X):
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != m:
            raise ValueError(f"expression {source!r} expects points of shape (count, {m}), got {X.shape}")
        with np.errstate(all="ignore"):
            return np.asarray(body(X), dtype=np.float64).reshape(X.shape[0])
    return f
