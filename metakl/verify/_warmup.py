"""Imported by the math pool's fork server, so that forked workers start warm: the first parse in a process builds
math-verify's parsers, and sympy imports its sets, matrices and solvers lazily on first use (together about a
second). One comparison of each common answer shape pays that once, in the server."""

import logging

logging.getLogger("math_verify").setLevel(logging.ERROR)

from metakl.verify.mathcheck import verify_with_math_verify  # noqa: E402

for _gold, _pred in (
    ("\\frac{x+1}{2}", "(1+x)/2"),
    ("(-\\infty, 3) \\cup (3, \\infty)", "x \\neq 3"),
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "(1, 2)"),
    ("\\{1, 2\\}", "1, 2"),
    ("x = 2", "2"),
    ("2\\cos 15^\\circ", "\\sqrt{3}"),
    ("3 + 2i", "2i + 3"),
    ("101_2", "5"),
):
    verify_with_math_verify(_gold, _pred)
