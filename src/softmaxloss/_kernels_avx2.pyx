# The same kernels as _kernels.pyx, compiled by setup.py with AVX2 + FMA enabled.
# softmaxloss._dispatch imports this module only on CPUs that support it.
include "_kernels.pyx"
