"""VNN-LIB properties (the VNN-COMP subset) and VNN-COMP result files.

A property declares inputs ``X_i`` and outputs ``Y_j`` and asserts the **unsafe** set: ``sat`` means a
counterexample exists, ``unsat`` that the property holds (REFERENCES.md, "Exchange formats").
``read_vnnlib`` returns the unsafe set in disjunctive normal form, grouped by input box, as in
VNN-COMP's reference tooling:  ``[(lower, upper, [(C, d), ...]), ...]``  — the input box
lower ≤ x ≤ upper together with ANY of the output polytopes  C y ≤ d  (C (k, outputs), d (k,)).
Supported: ``declare-const``, ``assert`` of ``<= >= < > =`` between linear terms (``+ - *``, numbers,
variables), ``and``, ``or`` (expanded to DNF).  Errors name the file, line and column.

Numbers are read exactly (decimal → ``fractions.Fraction``); NaN, infinities and numbers beyond the float64
range are refused, naming the file, line, constant and the variable it bounds.  The float
arrays are rounded *outward* (the input box contains the real one), and each disjunct and each (C, d)
carry what a sound decision needs (``Disjunct``, ``Constraint``): the exact box, ``d`` rounded both ways,
which rows are strict (``<``, ``>``: the unsafe set is then open), and whether C is exact in float64.
"""
from __future__ import annotations

import bisect
import itertools
import re
from decimal import Decimal
from fractions import Fraction

import numpy as np

from refcert.io.npz import atomic_write


class VnnlibError(ValueError):
    """A malformed or unsupported VNN-LIB / result file; the message gives file:line:column."""


class _Token(str):
    line: int
    column: int


def _tokens(text, where):
    """Parentheses, atoms (with positions); comments run from ';' to the end of the line."""
    line_starts = [0] + [m.end() for m in re.finditer("\n", text)]
    for match in re.finditer(r";[^\n]*|\s+|\(|\)|[^\s();]+", text):
        if match.group()[0] == ";" or match.group().isspace():
            continue
        token = _Token(match.group())
        token.line = bisect.bisect_right(line_starts, match.start())
        token.column = match.start() - line_starts[token.line - 1] + 1
        yield token


def _error(where, token, message):
    position = f"{token.line}:{token.column}" if token is not None else "end of file"
    return VnnlibError(f"{where}:{position}: {message}")


def parse_sexpressions(text, where="<string>"):
    """Nested lists of tokens; unbalanced parentheses give a located error."""
    stack, top, opened = [], [], []
    for token in _tokens(text, where):
        if token == "(":
            stack.append(top)
            opened.append(token)
            top = []
        elif token == ")":
            if not stack:
                raise _error(where, token, "unexpected ')'")
            done, top = top, stack.pop()
            opened.pop()
            done = _SExpr(done)
            done.token = token
            top.append(done)
        else:
            top.append(token)
    if stack:
        raise _error(where, opened[-1], "'(' is never closed")
    return top


class _SExpr(list):
    token: _Token


def _position(expr):
    """The token where ``expr`` starts (its closing parenthesis for an empty list)."""
    return expr if isinstance(expr, _Token) else (_position(expr[0]) if expr else expr.token)


FLOAT_MAX = Fraction(np.finfo(np.float64).max)


def _bad_number(text: str, about: str) -> str:
    """Why ``text`` is not a number VNN-LIB allows; ``about``: ' in the bound of X_0' or ''."""
    try:
        value = float(text)
    except ValueError:
        return f"undeclared variable or bad number {text!r} (numbers must be finite decimals)"
    kind = "NaN (not a number)" if value != value else "infinite"
    return f"the constant {text!r}{about} is {kind}; VNN-LIB numbers must be finite decimals"


def _linear(expr, names, where, about=""):
    """A linear term as ({variable: coefficient}, constant)."""
    if isinstance(expr, _Token):
        if expr in names:
            return {str(expr): Fraction(1)}, Fraction(0)
        try:
            value = Fraction(str(expr))
        except (ValueError, ZeroDivisionError):
            raise _error(where, expr, _bad_number(str(expr), about)) from None
        if abs(value) > FLOAT_MAX:
            raise _error(where, expr, f"the constant {str(expr)!r}{about} is beyond the float64 range (±1.8e308)")
        return {}, value
    if not expr:
        raise _error(where, expr.token, "empty term '()'")
    head, args = expr[0], [_linear(a, names, where, about) for a in expr[1:]]
    if head == "+" or (head == "-" and len(args) != 1):
        sign = [1] + [1 if head == "+" else -1] * (len(args) - 1)
        return _combine(args, sign)
    if head == "-":
        return _combine(args, [-1])
    if head == "*":
        constants = [a for a in args if not a[0]]
        if len(constants) < len(args) - 1:
            raise _error(where, head, "product of two variables is not linear")
        factor = Fraction(1)
        for constant in constants:
            factor *= constant[1]
        rest = [a for a in args if a[0]] or [({}, Fraction(1))]
        return {k: factor * v for k, v in rest[0][0].items()}, factor * rest[0][1]
    raise _error(where, head, f"unsupported term operator {str(head)!r}")


def _combine(args, signs):
    coefficients, constant = {}, Fraction(0)
    for (terms, value), sign in zip(args, signs):
        for name, coefficient in terms.items():
            coefficients[name] = coefficients.get(name, 0) + sign * coefficient
        constant += sign * value
    return coefficients, constant


def _atoms(expr, names, where):
    """(terms, constant, strict) meaning  terms·v + constant ≤ 0 (< 0 if strict), for one comparison."""
    if isinstance(expr, _Token) or len(expr) != 3 or expr[0] not in ("<=", ">=", "<", ">", "="):
        raise _error(where, _position(expr), "expected a comparison (<= a b), (>= a b) or (= a b)")
    variables = [str(a) for a in expr[1:] if isinstance(a, _Token) and a in names]
    about = f" in the bound of {variables[0]}" if len(variables) == 1 else ""
    (ta, ca), (tb, cb) = _linear(expr[1], names, where, about), _linear(expr[2], names, where, about)
    a_minus_b = _combine([(ta, ca), (tb, cb)], [1, -1])
    if any(abs(v) > FLOAT_MAX for v in [a_minus_b[1], *a_minus_b[0].values()]):
        raise _error(where, _position(expr), f"a coefficient or constant of this comparison{about} is beyond the "
                                             f"float64 range (±1.8e308)")
    b_minus_a = _combine([(ta, ca), (tb, cb)], [-1, 1])
    op = str(expr[0])
    strict = op in ("<", ">")
    return {"<=": [a_minus_b], "<": [a_minus_b], ">=": [b_minus_a], ">": [b_minus_a]}.get(
        op, [a_minus_b, b_minus_a]), strict


def _dnf(expr, names, where):
    """A formula as a list of disjuncts, each a list of atoms."""
    if isinstance(expr, _SExpr) and expr and expr[0] == "and":
        parts = [_dnf(e, names, where) for e in expr[1:]]
        return [sum(combo, []) for combo in itertools.product(*parts)]
    if isinstance(expr, _SExpr) and expr and expr[0] == "or":
        return [d for e in expr[1:] for d in _dnf(e, names, where)]
    atoms, strict = _atoms(expr, names, where)
    return [[(terms, constant, strict) for terms, constant in atoms]]


def _read_text(path):
    """(name for messages, file text); an unreadable file raises VnnlibError naming it."""
    try:
        with open(path, encoding="utf-8") as stream:
            return str(path), stream.read()
    except (OSError, UnicodeDecodeError) as err:
        raise VnnlibError(f"{path}: cannot read ({err})") from err


class Disjunct(tuple):
    """(lower, upper, [Constraint, ...]): the float box rounded outward (the closure of the real box);
    ``exact_lower``/``exact_upper`` the real box (lists of Fractions) and ``strict_lower``/``strict_upper``
    which of its bounds are strict (``X_i > a``), for membership tests and inward rounding."""
    exact_lower: list
    exact_upper: list
    strict_lower: list
    strict_upper: list


class Constraint(tuple):
    """(C, d): the unsafe rows C y ≤ d (float64).  ``strict`` (k,) bool: the row is C y < d;
    ``d_lower`` ≤ d_real ≤ ``d_upper`` (float64); ``exact_rows`` (k,) bool: C's row is exact in float64."""
    strict: np.ndarray
    d_lower: np.ndarray
    d_upper: np.ndarray
    exact_rows: np.ndarray


def rounded(value: Fraction, direction: int) -> float:
    """The float64 nearest ``value`` on the side ``direction`` (+1: ≥ value, −1: ≤ value)."""
    x = float(value)
    if direction > 0 and Fraction(x) < value:
        x = float(np.nextafter(x, np.inf))
    if direction < 0 and Fraction(x) > value:
        x = float(np.nextafter(x, -np.inf))
    return x + 0.0  # no -0.0


def constraint(C, d, strict=None) -> Constraint:
    """A Constraint from float arrays (C, d) read as exact (for writers and tests); rows non-strict by default."""
    C, d = np.atleast_2d(np.asarray(C, dtype=np.float64)), np.asarray(d, dtype=np.float64).reshape(-1)
    out = Constraint((C, d))
    out.strict = np.zeros(d.size, bool) if strict is None else np.asarray(strict, bool).reshape(-1)
    out.d_lower, out.d_upper, out.exact_rows = d.copy(), d.copy(), np.ones(d.size, bool)
    return out


def read_vnnlib(path):
    """The unsafe set of a VNN-LIB file: a list of Disjunct (lower, upper, [Constraint (C, d), ...])."""
    where, text = _read_text(path)
    names, inputs, outputs, formula = set(), [], [], [[]]
    for command in parse_sexpressions(text, where):
        if isinstance(command, _Token) or not command:
            raise _error(where, _position(command), "expected a command like (declare-const ...) or (assert ...)")
        if command[0] == "declare-const":
            if len(command) != 3 or not isinstance(command[1], _Token) or command[2] != "Real":
                raise _error(where, command[0], "expected (declare-const NAME Real)")
            match = re.fullmatch(r"([XY])_(\d+)", command[1])
            if not match:
                raise _error(where, command[1], f"variables must be named X_i or Y_j, got {str(command[1])!r}")
            names.add(str(command[1]))
            (inputs if match.group(1) == "X" else outputs).append(int(match.group(2)))
        elif command[0] == "assert":
            if len(command) != 2:
                raise _error(where, command[0], "expected (assert FORMULA)")
            formula = [a + b for a, b in itertools.product(formula, _dnf(command[1], names, where))]
            if len(formula) > 100000:
                raise _error(where, command[0], "the disjunctive normal form exceeds 100000 terms")
        else:
            raise _error(where, command[0], f"unsupported command {str(command[0])!r}")
    n_in, n_out = len(inputs), len(outputs)
    if sorted(inputs) != list(range(n_in)) or sorted(outputs) != list(range(n_out)):
        raise VnnlibError(f"{where}: variables must be X_0..X_{{n-1}} and Y_0..Y_{{m-1}} without gaps")
    grouped = {}
    for conjunct in formula:
        lower, upper = [None] * n_in, [None] * n_in
        strict_lower, strict_upper = [False] * n_in, [False] * n_in
        rows, rhs, strict = [], [], []
        for terms, constant, is_strict in conjunct:
            on_x = [k for k in terms if k[0] == "X" and terms[k] != 0]
            if on_x and len(terms) == 1:
                index, a = int(on_x[0][2:]), terms[on_x[0]]
                bound = -constant / a  # the float box is the closure; strictness is kept for membership
                if abs(bound) > FLOAT_MAX:
                    raise VnnlibError(f"{where}: a bound of {on_x[0]} is beyond the float64 range (±1.8e308)")
                if a > 0:
                    if upper[index] is None or bound < upper[index]:
                        upper[index], strict_upper[index] = bound, is_strict
                    elif bound == upper[index]:
                        strict_upper[index] |= is_strict
                else:
                    if lower[index] is None or bound > lower[index]:
                        lower[index], strict_lower[index] = bound, is_strict
                    elif bound == lower[index]:
                        strict_lower[index] |= is_strict
            elif on_x:
                raise VnnlibError(f"{where}: constraint {terms} mixes inputs with other variables (unsupported)")
            else:
                row = [Fraction(0)] * n_out
                for name, coefficient in terms.items():
                    row[int(name[2:])] += coefficient
                rows.append(row)
                rhs.append(-constant)
                strict.append(is_strict)
        missing = [i for i in range(n_in) if lower[i] is None or upper[i] is None]
        if missing:
            i = missing[0]
            side = "lower and upper bounds" if lower[i] is None and upper[i] is None else \
                "a lower bound" if lower[i] is None else "an upper bound"
            more = f" (and {len(missing) - 1} more input(s) lack bounds)" if len(missing) > 1 else ""
            raise VnnlibError(f"{where}: input X_{i} lacks {side}{more}; every X_i needs finite bounds such as "
                              f"(assert (>= X_{i} 0.0)) and (assert (<= X_{i} 1.0))")
        key = (tuple(lower), tuple(upper), tuple(strict_lower), tuple(strict_upper))
        if key not in grouped:
            box = Disjunct((np.array([rounded(q, -1) for q in lower]), np.array([rounded(q, +1) for q in upper]), []))
            box.exact_lower, box.exact_upper = lower, upper
            box.strict_lower, box.strict_upper = strict_lower, strict_upper
            grouped[key] = box
        C = np.array([[float(c) for c in row] for row in rows], dtype=np.float64).reshape(len(rows), n_out)
        entry = Constraint((C, np.array([float(v) for v in rhs], dtype=np.float64)))
        entry.strict = np.array(strict, dtype=bool)
        entry.d_lower = np.array([rounded(v, -1) for v in rhs], dtype=np.float64)
        entry.d_upper = np.array([rounded(v, +1) for v in rhs], dtype=np.float64)
        entry.exact_rows = np.array([all(Fraction(float(c)) == c for c in row) for row in rows], dtype=bool)
        grouped[key][2].append(entry)
    return list(grouped.values())


def _number(value):
    """The exact decimal of a float (a reader that parses decimals exactly gets the same number back)."""
    return str(Decimal(float(value) + 0.0))


def _row_text(row, rhs):
    terms = [(j, a) for j, a in enumerate(row) if a != 0]
    if len(terms) == 2 and rhs == 0 and sorted(a for _, a in terms) == [-1.0, 1.0]:
        (j, a), (k, _) = terms
        return f"(<= Y_{j} Y_{k})" if a == 1.0 else f"(<= Y_{k} Y_{j})"
    if len(terms) == 1 and terms[0][1] == 1.0:
        return f"(<= Y_{terms[0][0]} {_number(rhs)})"
    total = " ".join(f"(* {_number(a)} Y_{j})" for j, a in terms) or "0.0"
    return f"(<= (+ {total}) {_number(rhs)})" if len(terms) > 1 else f"(<= {total} {_number(rhs)})"


def write_vnnlib(path, disjuncts, comment: str | None = None):
    """Write a list of (lower, upper, [(C, d), ...]) (as ``read_vnnlib`` returns) atomically."""
    disjuncts = [(np.asarray(lo, dtype=np.float64).ravel(), np.asarray(hi, dtype=np.float64).ravel(),
                  [(np.atleast_2d(np.asarray(C, dtype=np.float64)), np.atleast_1d(np.asarray(d, dtype=np.float64)))
                   for C, d in specs]) for lo, hi, specs in disjuncts]
    if not disjuncts or not all(specs for _, _, specs in disjuncts):
        raise ValueError("write_vnnlib needs at least one input box, each with at least one (C, d)")
    n_in, n_out = disjuncts[0][0].size, disjuncts[0][2][0][0].shape[1]
    lines = [f"; {line}" for line in (comment or "").splitlines()]
    lines += [f"(declare-const X_{i} Real)" for i in range(n_in)]
    lines += [f"(declare-const Y_{j} Real)" for j in range(n_out)]

    def box(lo, hi):
        return [f"(>= X_{i} {_number(a)})" for i, a in enumerate(lo)] + [f"(<= X_{i} {_number(b)})" for i, b in enumerate(hi)]

    if len(disjuncts) == 1:
        lo, hi, specs = disjuncts[0]
        lines += [f"(assert {atom})" for atom in box(lo, hi)]
        terms = [" ".join(_row_text(r, v) for r, v in zip(C, d)) for C, d in specs]
    else:
        terms = [" ".join(box(lo, hi) + [_row_text(r, v) for r, v in zip(C, d)]) for lo, hi, specs in disjuncts
                 for C, d in specs]
    lines.append("(assert (or\n" + "\n".join(f"    (and {t})" for t in terms) + "\n))")
    data = ("\n".join(lines) + "\n").encode()
    atomic_write(path, lambda stream: stream.write(data))


_STATUS = {"sat": "sat", "violated": "sat", "unsat": "unsat", "holds": "unsat", "unknown": "unknown",
           "timeout": "timeout"}


def read_result(path):
    """(status, x, y) from a VNN-COMP result file; status in sat/unsat/unknown/timeout, x/y arrays or None."""
    where, text = _read_text(path)
    items = parse_sexpressions(text, where)
    if not items or not isinstance(items[0], _Token) or items[0] not in _STATUS:
        raise _error(where, _position(items[0]) if items else None, f"expected one of {sorted(_STATUS)}")
    status = _STATUS[str(items[0])]
    if status != "sat":
        if len(items) > 1:
            raise _error(where, _position(items[1]), f"unexpected text after {status!r}")
        return status, None, None
    if len(items) != 2 or isinstance(items[1], _Token):
        raise _error(where, _position(items[1]) if len(items) > 1 else None, "expected ((X_0 value) ... (Y_0 value))")
    values = {"X": {}, "Y": {}}
    for pair in items[1]:
        if isinstance(pair, _Token) or len(pair) != 2 or not re.fullmatch(r"[XY]_\d+", pair[0]):
            raise _error(where, _position(pair), "expected (X_i value) or (Y_j value)")
        try:
            values[pair[0][0]][int(pair[0][2:])] = float(pair[1])
        except (ValueError, TypeError):
            raise _error(where, _position(pair[1]), f"bad number {str(pair[1])!r}") from None
    arrays = []
    for kind in "XY":
        if sorted(values[kind]) != list(range(len(values[kind]))):
            raise VnnlibError(f"{where}: the {kind} values are not numbered 0..n-1")
        arrays.append(np.array([values[kind][i] for i in range(len(values[kind]))]))
    return status, arrays[0], arrays[1]


def write_result(path, status: str, x=None, y=None):
    """Write a VNN-COMP result file atomically: ``sat`` needs the counterexample x and its outputs y."""
    if status not in ("sat", "unsat", "unknown", "timeout"):
        raise ValueError(f"status must be sat, unsat, unknown or timeout, got {status!r}")
    text = status + "\n"
    if status == "sat":
        if x is None or y is None:
            raise ValueError("a 'sat' result needs the counterexample x and the outputs y")
        pairs = [f"(X_{i} {float(v)!r})" for i, v in enumerate(np.ravel(x))]
        pairs += [f"(Y_{j} {float(v)!r})" for j, v in enumerate(np.ravel(y))]
        text += "(" + "\n ".join(pairs) + ")\n"
    atomic_write(path, lambda stream: stream.write(text.encode()))
