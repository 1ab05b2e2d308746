"""Does torch compute correctly on CPU tensors whose address is not a
multiple of their element size (a SafeTensors file whose header length
leaves its tensors misaligned)? For every multi-byte dtype and two
misalignments, one fresh process (a crash, SIGBUS say, shows as CRASH) runs
each op on a tensor viewing misaligned memory (torch.frombuffer, as the
streamer hands tensors out) and on an aligned copy, and compares:

    .venv/bin/python bench/misaligned_ops.py

true: identical results; close: equal within float tolerance, not bitwise
(matmul: BLAS picks another kernel for another address); unsupported: torch
raises for this dtype, aligned or not; n/a: op not meaningful for the dtype.
The finding (x86-64, torch 2.9.1: no false, no CRASH) is why
streamer.MISALIGNED_VIEWS_OK hands such tensors out without a copy."""
import json, subprocess, sys
OPS = ["inplace_mul", "inplace_copy", "eq", "clone", "copy_", "to_f32", "to_f64", "to_bf16", "sum", "matmul", "view_reshape", "contiguous_T", "numpy", "mul", "max"]
CHILD = r'''
import sys, torch, json
from runai_model_streamer.safetensors_streamer.safetensors_pytorch import get_safetensors_dtype_map
name, ops, off, n = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3]), int(sys.argv[4])
dt = get_safetensors_dtype_map()[name]
g = torch.Generator().manual_seed(0)
esize = torch.empty(0, dtype=dt).element_size()
raw = torch.randint(0, 256, (n * esize,), dtype=torch.uint8, generator=g)
if dt.is_complex:
    raw = torch.randn(n * esize // 4, generator=g).view(torch.uint8).clone()
elif dt.is_floating_point and esize >= 2:
    # finite values: avoid NaN != NaN in comparisons
    raw = torch.randn(n, generator=g).to(dt).view(torch.uint8).reshape(-1).clone()
import ctypes
buf = torch.zeros(n * esize + 128, dtype=torch.uint8)
base = buf.data_ptr()
start = (64 - base % 64) % 64 + off
buf[start:start + n * esize] = raw
mis = torch.frombuffer((ctypes.c_char * (n * esize)).from_address(base + start), dtype=dt)
assert mis.data_ptr() == base + start
ok = mis.data_ptr() % esize != 0 or esize == 1
ref = raw.clone().view(dt)
assert ref.data_ptr() % 64 == 0
def run(t):
    if op == "inplace_mul":
        if t.dtype == torch.bool or "float8" in str(dt) or "float4" in str(dt) or t.dtype in (torch.uint16, torch.uint32, torch.uint64): return None
        x = t.clone() if t is ref else t
        if t is not ref:
            saved = t.clone()
        x.mul_(3)
        out = x.clone().view(torch.uint8)
        if t is not ref:
            t.copy_(saved)
        return out
    if op == "inplace_copy":
        x = torch.empty_like(ref)
        x.copy_(ref.flip(0))
        if t is not ref:
            saved = t.clone(); t.copy_(ref.flip(0)); out = t.clone().view(torch.uint8); t.copy_(saved); return out
        return x.view(torch.uint8)
    if op == "eq": return (t == ref).all().item()
    if op == "clone": return t.clone().view(torch.uint8)
    if op == "copy_":
        d = torch.empty_like(ref); d.copy_(t); return d.view(torch.uint8)
    if op == "to_f32": return t.to(torch.float32)
    if op == "to_f64": return t.to(torch.float64)
    if op == "to_bf16": return t.to(torch.bfloat16)
    if op == "sum": return t.to(torch.float64).sum() if not t.is_floating_point() else t.sum()
    if op == "matmul":
        if not t.is_floating_point() or t.dtype.itemsize < 2: return None
        m = t[: (n // 64) * 64].reshape(-1, 64)
        return m @ m.T
    if op == "view_reshape": return t.reshape(-1, 8).view(-1).reshape(8, -1).contiguous().view(torch.uint8)
    if op == "contiguous_T": return t.reshape(8, -1).T.contiguous().view(torch.uint8)
    if op == "numpy":
        try: import numpy as np
        except Exception: return None
        if dt in (torch.bfloat16,) or "float8" in str(dt) or "float4" in str(dt): return None
        return torch.from_numpy(t.numpy().copy()).view(torch.uint8)
    if op == "mul":
        if t.dtype == torch.bool or "float8" in str(dt) or "float4" in str(dt): return None
        return (t * 2).view(torch.uint8) if t.dtype != torch.bool else None
    if op == "max":
        if "float8" in str(dt) or "float4" in str(dt) or t.dtype == torch.bool: return None
        return t.max()
res = {}
for op in ops:
    try:
        b = run(ref)
    except Exception:
        res[op] = "unsupported"; continue
    try:
        a = run(mis)
    except Exception as e:
        res[op] = "error " + repr(e)[:150]; continue
    if a is None: res[op] = "n/a"; continue
    if isinstance(a, bool): same = a
    elif isinstance(a, torch.Tensor) and a.is_floating_point(): same = torch.equal(a, b) or ("close" if torch.allclose(a.double(), b.double(), rtol=1e-3, atol=1e-3) else False)
    else: same = torch.equal(a, b)
    res[op] = same
    print(op, same, flush=True, file=sys.stderr)
print(json.dumps({"r": res, "misaligned": ok}))
'''
names = sys.argv[1:] or None
from runai_model_streamer.safetensors_streamer.safetensors_pytorch import get_safetensors_dtype_map
import torch
dm = get_safetensors_dtype_map()
out = {}
for name, dt in dm.items():
    esize = torch.empty(0, dtype=dt).element_size()
    if esize == 1: continue
    for off in sorted({1, esize // 2}):
        p = subprocess.run([sys.executable, "-c", CHILD, name, ",".join(OPS), str(off), "4096"], capture_output=True, text=True)
        if p.returncode != 0:
            out[f"{name}+{off}"] = f"CRASH rc={p.returncode} after {p.stderr.strip().splitlines()[-3:]}"
            print(name, off, out[f"{name}+{off}"], flush=True)
            continue
        for op, res in json.loads(p.stdout.strip().splitlines()[-1])["r"].items():
            out[f"{name}+{off} {op}"] = res
            if res not in (True, "n/a", "unsupported"): print(name, off, op, res, flush=True)
from collections import Counter
print(f"torch {torch.__version__}; {len(out)} (dtype, misalignment, op) cases:",
      dict(Counter(str(v) if not str(v).startswith(("CRASH", "error")) else str(v)[:5] for v in out.values())))
