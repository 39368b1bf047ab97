"""Where the torch adapter's time goes at (4096, 1024, 32000) float32, 2 threads: per-phase
seconds of one call at several chunk sizes, interleaved with the three GEMMs alone; and the
dH layout (G @ W vs (W.T @ G.T).T)."""
import statistics, sys, time
import torch
import softmaxloss.torch as smt
import softmaxloss._linear as linear
torch.set_num_threads(2)
n, d, v = 4096, 1024, 32000
g = torch.Generator().manual_seed(0)
h = torch.randn(n, d, generator=g).requires_grad_()
w = (torch.randn(v, d, generator=g) / d**0.5).requires_grad_()
t = torch.randint(0, v, (n,), generator=g)
phases = {}
orig = (smt._LinearGemms.logits, smt._LinearGemms.backward, linear._kernel_totals)
def timed(name, f):
    def wrapper(*a, **k):
        s = time.perf_counter(); r = f(*a, **k); phases[name] = phases.get(name, 0) + time.perf_counter() - s; return r
    return wrapper
smt._LinearGemms.logits = timed("logits GEMM", orig[0])
smt._LinearGemms.backward = timed("dH + dW GEMMs", orig[1])
linear._kernel_totals = timed("kernel", orig[2])
def gemms():
    hd, wd = h.detach(), w.detach()
    l = hd @ wd.T; l @ wd; l.T @ hd
def fused(chunk):
    h.grad = w.grad = None
    smt.linear_cross_entropy(h, w, t, chunk_size=chunk).backward()
results = {}
configs = [("gemms", None)] + [("fused", c) for c in (256, 409, 1024, 2048, 4096)]
for rep in range(int(sys.argv[1]) if len(sys.argv) > 1 else 3):
    for name, c in configs:
        phases.clear()
        s = time.perf_counter(); gemms() if name == "gemms" else fused(c); e = time.perf_counter() - s
        results.setdefault((name, c), []).append((e, dict(phases)))
base = statistics.median(e for e, _ in results[("gemms", None)])
for key, runs in results.items():
    runs.sort(key=lambda r: r[0]); e, ph = runs[len(runs) // 2]
    print(f"{key}: median {e:.2f} s ({e / base:.3f}x gemms; runs {', '.join(f'{r[0]:.2f}' for r in runs)})",
          " ".join(f"{k} {x:.2f}" for k, x in ph.items()))
