"""A multi grader's ``calculate_output``: parsed with :mod:`ast` and evaluated by a walk of its tree, never ``eval``;
numbers bounded by ±1e15."""

from __future__ import annotations

import ast
import math
from collections.abc import Callable

from .errors import MAX_FORMULA_CHARS, MAX_FORMULA_DEPTH, MAX_MAGNITUDE, FormulaError

# ---- formulas -----------------------------------------------------------------------------------------------------
FUNCTIONS: dict[str, tuple[Callable[..., float], int | None]] = {
    "min": (min, None),
    "max": (max, None),
    "abs": (abs, 1),
    "floor": (lambda x: float(math.floor(x)), 1),
    "ceil": (lambda x: float(math.ceil(x)), 1),
    "exp": (math.exp, 1),
    "sqrt": (math.sqrt, 1),
    "log": (math.log, 1),
}
_BINARY: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.Pow: lambda a, b: a**b,
}


class Formula:
    """A checked ``calculate_output``: :meth:`evaluate` it with the sub-graders' rewards."""

    def __init__(self, tree: ast.expr, names: frozenset[str]):
        self.tree = tree
        self.names = names

    def evaluate(self, values: dict[str, float]) -> float:
        """Its value on floats; ArithmeticError or ValueError when it has none (a division by zero, the log of a
        negative, a magnitude over :data:`MAX_MAGNITUDE`)."""
        return _evaluate(self.tree, values)


def _too_large() -> OverflowError:
    return OverflowError(f"a value is beyond ±{MAX_MAGNITUDE:g}")


def _bounded(x: float) -> float:
    if not math.isfinite(x) or abs(x) > MAX_MAGNITUDE:
        raise _too_large()
    return x


def _evaluate(node: ast.expr, values: dict[str, float]) -> float:
    if isinstance(node, ast.Constant):
        assert isinstance(node.value, int | float)  # checked by parse_formula
        return float(node.value)
    if isinstance(node, ast.Name):
        return values[node.id]
    if isinstance(node, ast.UnaryOp):
        x = _evaluate(node.operand, values)
        return -x if isinstance(node.op, ast.USub) else x
    if isinstance(node, ast.BinOp):
        a, b = _evaluate(node.left, values), _evaluate(node.right, values)
        if isinstance(node.op, ast.Pow) and a == 0 and b < 0:
            raise ZeroDivisionError("zero to a negative power")
        try:
            result = _BINARY[type(node.op)](a, b)
        except OverflowError:
            raise _too_large() from None
        if isinstance(result, complex):
            raise ValueError("a negative number to a fractional power")
        return _bounded(result)
    assert isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    fn, _ = FUNCTIONS[node.func.id]
    args = [_evaluate(a, values) for a in node.args]
    try:
        return _bounded(float(fn(*args)))
    except OverflowError:
        raise _too_large() from None


def parse_formula(text: str, names: set[str], param: str = "calculate_output") -> Formula:
    """``text`` as a :class:`Formula` over the sub-graders ``names``; a :class:`FormulaError` naming what it may not
    hold. Its syntax tree is walked, never executed."""
    if len(text) > MAX_FORMULA_CHARS:
        raise FormulaError(f"Invalid formula in '{param}': longer than {MAX_FORMULA_CHARS} characters.", param)
    try:
        # OpenAI's guide writes a power as ^: read as **, so it binds as a power does (Python's ^ binds below + and *).
        tree = ast.parse(text.strip().replace("^", "**"), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        msg = e.msg if isinstance(e, SyntaxError) else str(e)
        raise FormulaError(f"Invalid formula in '{param}': it does not parse ({msg}).", param) from None
    _check_node(tree.body, names, param, 0)
    _check_constants(tree.body, param)
    return Formula(tree.body, frozenset(names))


def _check_constants(node: ast.expr, param: str) -> None:
    """A part of the formula without names has one value whatever the rewards: refuse it now if it has none
    (``10 ** 10 ** 10``, ``1 / 0``)."""
    if not any(isinstance(n, ast.Name) and not _is_callee(node, n) for n in ast.walk(node)):
        try:
            _evaluate(node, {})
        except (ArithmeticError, ValueError) as e:
            what = f"Invalid formula in '{param}': {ast.unparse(node)[:60]} has no value ({e})."
            raise FormulaError(what, param) from None
        return
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.expr):
            _check_constants(child, param)


def _is_callee(tree: ast.expr, name: ast.Name) -> bool:
    return any(isinstance(n, ast.Call) and n.func is name for n in ast.walk(tree))


def _check_node(node: ast.expr, names: set[str], param: str, depth: int) -> None:
    def refuse(what: str) -> FormulaError:
        return FormulaError(f"Invalid formula in '{param}': {what}.", param)

    if depth > MAX_FORMULA_DEPTH:
        raise refuse(f"nested deeper than {MAX_FORMULA_DEPTH} levels")
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise refuse(f"{node.value!r} is not a number")
        if not abs(node.value) <= MAX_MAGNITUDE:
            raise refuse(f"the number {ast.unparse(node)[:20]} is beyond ±{MAX_MAGNITUDE:g}")
        return
    if isinstance(node, ast.Name):
        if node.id not in names:
            known = ", ".join(sorted(names)) or "none"
            raise refuse(f"{node.id!r} is not the name of a sub-grader (they are: {known})")
        return
    if isinstance(node, ast.UnaryOp):
        if not isinstance(node.op, ast.USub | ast.UAdd):
            raise refuse(f"the operator {type(node.op).__name__} is not allowed")
        _check_node(node.operand, names, param, depth + 1)
        return
    if isinstance(node, ast.BinOp):
        if type(node.op) not in _BINARY:
            raise refuse(f"the operator {type(node.op).__name__} is not allowed (only + - * / ** ^)")
        _check_node(node.left, names, param, depth + 1)
        _check_node(node.right, names, param, depth + 1)
        return
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name):
            raise refuse(f"{ast.unparse(node.func)[:40]!r} is not a function it may call")
        if node.func.id not in FUNCTIONS:
            raise refuse(f"{node.func.id!r} is not a function it may call (only {', '.join(FUNCTIONS)})")
        _, arity = FUNCTIONS[node.func.id]
        if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
            raise refuse(f"{node.func.id}() takes plain arguments")
        if (arity is None and not node.args) or (arity is not None and len(node.args) != arity):
            wanted = "at least 1 argument" if arity is None else f"{arity} argument"
            raise refuse(f"{node.func.id}() takes {wanted}, not {len(node.args)}")
        for a in node.args:
            _check_node(a, names, param, depth + 1)
        return
    if isinstance(node, ast.Attribute):
        raise refuse(f"attribute access ({ast.unparse(node)[:40]}) is not allowed")
    raise refuse(f"{type(node).__name__} is not allowed (only numbers, sub-grader names, + - * / ** ^ and calls)")
