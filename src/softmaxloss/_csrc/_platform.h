/*
 * Platform and instruction-set facts of the softmaxloss kernels, in one place:
 *
 * - the compiler (SML_COMPILER) and OpenMP (SML_OPENMP, sml_max_threads), as compiled in;
 * - the instruction set this translation unit is compiled for: SML_TARGET_AVX,
 *   SML_TARGET_AVX2_FMA, SML_TARGET_AVX512 (1 or 0, from the compiler's own macros, so
 *   they state what the flags did, not what was asked for) and SML_ISA, its name in
 *   build_info() and show_config();
 * - the run-time CPU tests: sml_cpu_supports(test) for the `cpu` field of a row of the
 *   table of builds (src/softmaxloss/_builds.py), called through softmaxloss._cpu before
 *   that build's module is imported (importing it on a CPU without its instructions could
 *   already crash on an illegal instruction).
 *
 * The table says which builds exist and with which flags; code that differs by instruction
 * set tests SML_TARGET_* (the tiles of _blockops.h, the conversions of _vector.h).
 */
#ifndef SOFTMAXLOSS_PLATFORM_H
#define SOFTMAXLOSS_PLATFORM_H

#include <stdint.h>
#include <string.h>

/* ---- compiler and OpenMP ------------------------------------------------------ */

#if defined(_OPENMP)
#include <omp.h>
#define SML_OPENMP 1
static inline int sml_max_threads(void) { return omp_get_max_threads(); }
#else
#define SML_OPENMP 0
static inline int sml_max_threads(void) { return 1; }
#endif

#if defined(__clang__)
#define SML_COMPILER "clang " __clang_version__
#elif defined(__GNUC__)
#define SML_COMPILER "gcc " __VERSION__
#elif defined(_MSC_VER)
#define SML_STR2(x) #x
#define SML_STR(x) SML_STR2(x)
#define SML_COMPILER "msvc " SML_STR(_MSC_FULL_VER)
#else
#define SML_COMPILER "unknown"
#endif

/* ---- the instruction set this translation unit is compiled for ---------------- */

#if defined(__AVX__)
#define SML_TARGET_AVX 1
#else
#define SML_TARGET_AVX 0
#endif

/* MSVC's /arch:AVX2 and /arch:AVX512 have FMA without defining __FMA__. */
#if defined(__AVX2__) && (defined(__FMA__) || defined(_MSC_VER))
#define SML_TARGET_AVX2_FMA 1
#else
#define SML_TARGET_AVX2_FMA 0
#endif

/* x86-64-v4's AVX-512 subset (MSVC's /arch:AVX512 also has CD), with AVX2 and FMA. */
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) \
    && defined(__AVX512VL__) && SML_TARGET_AVX2_FMA
#define SML_TARGET_AVX512 1
#else
#define SML_TARGET_AVX512 0
#endif

#if SML_TARGET_AVX512
#define SML_ISA "avx512f+bw+dq+vl"
#elif defined(__AVX512F__)
#define SML_ISA "avx512f"
#elif SML_TARGET_AVX2_FMA
#define SML_ISA "avx2+fma"
#elif defined(__AVX2__)
#define SML_ISA "avx2"
#elif defined(__aarch64__) || defined(_M_ARM64)
#define SML_ISA "neon (aarch64 baseline)"
#elif defined(__x86_64__) || defined(_M_X64)
#define SML_ISA "sse2 (x86-64 baseline)"
#else
#define SML_ISA "generic"
#endif

/* ---- what this CPU and its OS run (x86-64: cpuid and xgetbv) -------------------- */

#if (defined(__x86_64__) || defined(_M_X64)) && defined(_MSC_VER) && !defined(__clang__)
#define SML_CPUID 1
#include <intrin.h>
#include <immintrin.h>
static inline void sml__cpuid(int leaf, int subleaf, unsigned int r[4])
{
    int info[4];
    __cpuidex(info, leaf, subleaf);
    for (int k = 0; k < 4; k++) r[k] = (unsigned int)info[k];
}
static inline uint64_t sml__xcr0(void) { return (uint64_t)_xgetbv(0); }
#elif (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define SML_CPUID 1
#include <cpuid.h>
static inline void sml__cpuid(int leaf, int subleaf, unsigned int r[4])
{
    __cpuid_count(leaf, subleaf, r[0], r[1], r[2], r[3]);
}
/* xgetbv by name in assembly: the intrinsic would need -mxsave. */
static inline uint64_t sml__xcr0(void)
{
    unsigned int lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}
#else
#define SML_CPUID 0
#endif

#if SML_CPUID
/* cpuid leaf 1 ECX, leaf 7 (subleaf 0) EBX; XCR0: the register state the OS saves. */
#define SML__FMA (1u << 12)
#define SML__OSXSAVE (1u << 27)
#define SML__AVX (1u << 28)
#define SML__AVX2 (1u << 5)
#define SML__AVX512F (1u << 16)
#define SML__AVX512DQ (1u << 17)
#define SML__AVX512CD (1u << 28)
#define SML__AVX512BW (1u << 30)
#define SML__AVX512VL (1u << 31)
#define SML__XCR0_XMM_YMM 0x06u          /* SSE and AVX state */
#define SML__XCR0_OPMASK_ZMM 0xE0u       /* opmask, ZMM0-15 upper halves, ZMM16-31 */

/* Leaf 7 EBX when the CPU has AVX and FMA and the OS saves the XCR0 state `xcr0_bits`;
 * else 0. xgetbv is only executed when the OS has enabled it (OSXSAVE). */
static inline unsigned int sml__leaf7_ebx_if(uint64_t xcr0_bits)
{
    unsigned int r[4];
    sml__cpuid(0, 0, r);
    if (r[0] < 7) return 0;
    sml__cpuid(1, 0, r);
    unsigned int need = SML__FMA | SML__OSXSAVE | SML__AVX;
    if ((r[2] & need) != need) return 0;
    if ((sml__xcr0() & xcr0_bits) != xcr0_bits) return 0;
    sml__cpuid(7, 0, r);
    return r[1];
}
#endif

/* 1 when this CPU (and its OS, which must save the YMM registers) runs AVX2 and FMA.
 * The `cpu` test "avx2+fma" of the table (_kernels.pyx also exports it as
 * cpu_has_avx2_fma()). */
static inline int sml_cpu_has_avx2_fma(void)
{
#if SML_CPUID
    return (sml__leaf7_ebx_if(SML__XCR0_XMM_YMM) & SML__AVX2) != 0;
#else
    return 0;
#endif
}

/* 1 when this CPU runs AVX-512 F, CD, BW, DQ and VL (x86-64-v4's AVX-512; CD for MSVC's
 * /arch:AVX512), AVX2 and FMA, and its OS saves the opmask and ZMM registers: the `cpu`
 * test "avx512". (macOS enables the AVX-512 state only on a thread's first use, so there
 * XCR0 says no and the test is 0: the build is not chosen, which is safe.) */
static inline int sml_cpu_has_avx512(void)
{
#if SML_CPUID
    unsigned int need = SML__AVX2 | SML__AVX512F | SML__AVX512CD | SML__AVX512BW
                      | SML__AVX512DQ | SML__AVX512VL;
    return (sml__leaf7_ebx_if(SML__XCR0_XMM_YMM | SML__XCR0_OPMASK_ZMM) & need) == need;
#else
    return 0;
#endif
}

/* The run-time test named by a row's `cpu` field in _builds.py: 1 if this CPU and OS run
 * that build, 0 if not, -1 for a name not known here. A new instruction set whose test is
 * not one of these adds its function above and its name here. */
static inline int sml_cpu_supports(const char *test)
{
    if (strcmp(test, "avx2+fma") == 0) return sml_cpu_has_avx2_fma();
    if (strcmp(test, "avx512") == 0) return sml_cpu_has_avx512();
    return -1;
}

#endif /* SOFTMAXLOSS_PLATFORM_H */
