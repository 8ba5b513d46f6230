"""Imported by the math pool's fork server: one comparison so that forked workers start with math-verify's
parsers built (the first parse in a process costs about half a second)."""

import logging

logging.getLogger("math_verify").setLevel(logging.ERROR)

from metakl.verify.mathcheck import verify_with_math_verify  # noqa: E402

verify_with_math_verify("\\frac{x+1}{2}", "(1+x)/2")
