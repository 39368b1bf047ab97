"""What this CPU and its OS run: the run-time tests of the table of builds (`_builds.py`).

A module of its own, compiled for the baseline instruction set, so that a build's test can
run before that build's module is imported. The tests are `sml_cpu_supports` in
`_csrc/_platform.h`.
"""


cdef extern from "_platform.h" nogil:
    int sml_cpu_supports(const char *test)


def supports(test):
    """Whether this CPU and OS run the code of a build whose `cpu` test is `test`
    ("avx2+fma", "avx512"); ValueError for a test `_platform.h` does not know."""
    cdef int result = sml_cpu_supports(str(test).encode("ascii"))
    if result < 0:
        raise ValueError(f"unknown CPU test {test!r}: _csrc/_platform.h's sml_cpu_supports does not know it")
    return result == 1
