"""Stubs for `softmaxloss._cpu` (checked by `mypy.stubtest` in tests/test_typing.py)."""

def supports(test: str) -> bool:
    """Whether this CPU and OS run the code of a build whose `cpu` test is `test`
    ("avx2+fma", "avx512"); ValueError for a test `_platform.h` does not know."""

# Cython's doctest dictionary (empty here).
__test__: dict[str, str]
