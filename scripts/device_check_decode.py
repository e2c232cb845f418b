"""`just device-check`, decode part (scripts/device_check.sh runs it).

angel engine on a GPU: a full-width AntAngelMed-FP8 slice (BENCH_LAYERS layers, default 8) built in GPU memory
with random block-FP8 weights (no checkpoint on disk). Sections, each saved to $OUT/decode_bench.json as it ends:
  graph_vs_eager   CUDA-graph decode vs eager decode logits (padded batch too): the graph path never ran before
  triton_vs_torch_ops  the triton runner (real kernels) vs the same runner on the plain-torch twins: prefill of 32
                   tokens + 8 greedy decode steps at batch 1 and 3; max |diff| of the last-position logits
                   relative to the logit scale, argmax agreement and the twin's top-2 margin per step
  runs             generate_batch timing; 'cold' = first run at a new cache width (graph captured inside the timed
                   decode window, what `angel bench` measures), 'warm' = the same shapes again
  eager_step       kernels per decode step (profiler) and host time of an eager step
  graph_replay_ms  GPU time of one graph replay alone (no host gaps); lm_head_ms for extrapolating to 32 layers
  micro            kernels timed eagerly (do_bench: includes host launch cost) and in a CUDA graph, among them
                   fused_moe with the activation quantised once outside (x = (xq, scale)) and with the shared
                   expert appended as extra experts (ops.append_shared_expert)
  launches         `angel bench --count-launches` for antangelmed-fp8 at TP 1 on this device, when available
Env: BENCH_LAYERS, BENCH_TINY=1 (CPU smoke test: tiny widths, torch twins, a few seconds)."""
import json, os, statistics, sys, time, traceback
import torch
from torch import nn

import tempfile
OUT = os.environ.get("OUT") or tempfile.mkdtemp(); os.makedirs(OUT, exist_ok=True)
TINY = os.environ.get("BENCH_TINY") == "1"
DEV = "cuda" if torch.cuda.is_available() else "cpu"
L = int(os.environ.get("BENCH_LAYERS") or ("2" if TINY else "8"))
from angelcli.config import ModelConfig
from angelcli.model.bailing import BailingMoeForCausalLM
from angelcli.model.fp8 import swap_to_fp8
from angelcli.model.layers import Rotary
from angelcli.engine import Engine, SamplingParams
from angelcli.bench import step_bytes
from angelcli.planner import find_gpu

R = {"device": torch.cuda.get_device_name() if DEV == "cuda" else "cpu", "layers": L, "torch": torch.__version__,
     "triton": __import__("triton").__version__, "errors": []}
def save():
    with open(os.path.join(OUT, "decode_bench.json"), "w") as f:
        json.dump(R, f, indent=1, default=str)
def fail(where):
    R["errors"].append(f"{where}: " + traceback.format_exc()[-2500:]); save(); print(R["errors"][-1], flush=True)
def n_graphs(e):
    """Captured CUDA graphs of an engine's runner (engine/graphs.py: one per padded batch size and mode)."""
    g = getattr(e.net, "graphs", None)
    return len(g.graphs) if g is not None else 0
def sync():
    if DEV == "cuda":
        torch.cuda.synchronize()

root = os.path.dirname(os.path.dirname(os.path.abspath(__import__("angelcli").__file__)))
d = json.load(open(os.path.join(root, "angelcli/assets/configs/antangelmed-fp8.json")))
d["num_hidden_layers"] = L
if TINY:
    d.update(hidden_size=256, num_attention_heads=8, num_key_value_heads=2, head_dim=32, num_experts=32,
             moe_intermediate_size=128, moe_shared_expert_intermediate_size=128, intermediate_size=512, vocab_size=512)
cfg = ModelConfig.from_dict(d)

def rand_fp8(shape, dev):
    out = torch.empty(shape, dtype=torch.uint8, device=dev)
    flat, step = out.view(-1), 1 << 28
    for a in range(0, flat.numel(), step):  # |x| in [0.125, 0.94] with a random sign: never NaN / inf
        n = min(step, flat.numel() - a)
        flat[a:a + n] = torch.randint(0x20, 0x38, (n,), dtype=torch.uint8, device=dev) | \
            (torch.randint(0, 2, (n,), dtype=torch.uint8, device=dev) << 7)
    return out.view(torch.float8_e4m3fn)

def build():
    with torch.device("meta"):
        model = BailingMoeForCausalLM(cfg)
        dense = {n: (((m.weight.shape[0] + 127) // 128, (m.weight.shape[1] + 127) // 128), False)
                 for n, m in model.named_modules() if isinstance(m, nn.Linear) and n != "lm_head"}
        swap_to_fp8(model, dense)
        for layer in model.model.layers:
            ex = getattr(layer.mlp, "experts", None)
            if ex is not None:
                I, H = ex.inter, cfg.hidden_size
                ex.to_fp8((2 * I // 128, H // 128), (H // 128, I // 128), False)
    torch.manual_seed(0)
    for mname, mod in model.named_modules():
        for pname, p in list(mod._parameters.items()):
            if p is None:
                continue
            if p.dtype == torch.float8_e4m3fn:
                t = rand_fp8(p.shape, DEV)
            elif pname.endswith("_scale"):
                t = torch.full(p.shape, 0.01, dtype=torch.float32, device=DEV)
            elif pname == "expert_bias":
                t = torch.randn(p.shape, device=DEV) * 0.01
            elif "norm" in mname:
                t = torch.ones(p.shape, dtype=torch.bfloat16, device=DEV)
            else:
                t = (torch.randn(p.shape, device=DEV) * 0.02).to(torch.bfloat16)
            mod._parameters[pname] = nn.Parameter(t, requires_grad=False)
    model.rotary = Rotary(cfg).to(DEV)
    return model.eval()

KV_TOK = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * 2
GPU = find_gpu(R["device"]) if DEV == "cuda" else None
PEAK = GPU["bandwidth_gbs"] * 1e9 if GPU else float("nan")

def run(eng, B, ctx, tokens, label):
    g = torch.Generator().manual_seed(B * 100003 + ctx)
    prompts = [torch.randint(0, cfg.vocab_size, (ctx,), generator=g).tolist() for _ in range(B)]
    graphs0 = n_graphs(eng)
    t0 = time.perf_counter(); stamps = []
    for i, _st in eng.generate_batch(prompts, SamplingParams(max_new_tokens=tokens)):
        if i == 0:
            stamps.append(time.perf_counter())
    sync()
    steps = [b - a for a, b in zip(stamps, stamps[1:])]
    nbytes = step_bytes(eng.model, cfg, B, ctx, KV_TOK)
    med = statistics.median(steps[1:]) if len(steps) > 1 else float("nan")
    row = dict(label=label, batch=B, context=ctx, tokens=tokens, ttft_s=round(stamps[0] - t0, 4),
               first_step_ms=round(steps[0] * 1e3, 3) if steps else None, median_step_ms=round(med * 1e3, 3),
               bench_style_decode_tok_s=round(B * len(steps) / (stamps[-1] - stamps[0]), 1) if steps else None,
               tok_s_from_median_step=round(B / med, 1) if steps else None, bytes_per_step=nbytes,
               ideal_step_ms=round(nbytes / PEAK * 1e3, 4), roofline_fraction_median=round(nbytes / med / PEAK, 4),
               graphs_before=graphs0, graphs_after=n_graphs(eng))
    R.setdefault("runs", []).append(row); save(); print(json.dumps(row), flush=True)

t = time.time()
model = build(); sync()
R["build_s"] = round(time.time() - t, 1)
R["weights_gb"] = round(sum(p.numel() * p.element_size() for p in model.parameters()) / 1e9, 2)
if DEV == "cuda":
    a = torch.empty(1 << 30, dtype=torch.float32, device=DEV); b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    sync(); t = time.perf_counter()
    for _ in range(5):
        b.copy_(a)
    sync(); R["measured_copy_gbs_read_plus_write"] = round(5 * 2 * a.numel() * 4 / (time.perf_counter() - t) / 1e9)
    del a, b
save()
ops = "torch" if TINY else "triton"
KV = 400_000 if not TINY else 40_000
eng = Engine(model, cfg, device=DEV, backend="triton", kv_tokens=KV, max_seq_len=16384, paged_ops=ops)
eng2 = Engine(model, cfg, device=DEV, backend="triton", kv_tokens=KV, max_seq_len=16384, paged_ops=ops,
              cuda_graphs=False)
eng2.net.pool = eng.net.ensure_pool(KV)  # one KV pool for both

# ---- 1. graph decode == eager decode? (same tokens fed to both) ----------------------------------------
def decode_logits(e, prompts, toks):
    cache = e.new_cache(len(prompts), len(prompts[0]) + len(toks) + 2)
    outs = [e.prefill(torch.tensor(prompts), cache)]
    for tk in toks:
        outs.append(e.decode_step(torch.tensor(tk, device=DEV), cache))
    cache.reset()
    return outs
try:
    res = {}
    for B in (1, 3):  # 3 -> padded graph batch 4
        g = torch.Generator().manual_seed(7 + B)
        prompts = [torch.randint(0, cfg.vocab_size, (200,), generator=g).tolist() for _ in range(B)]
        toks, cache = [], eng2.new_cache(B, 210)
        lg = eng2.prefill(torch.tensor(prompts), cache)
        for _ in range(4):
            tk = lg.argmax(-1); toks.append(tk.tolist()); lg = eng2.decode_step(tk, cache)
        cache.reset()
        ref_out = decode_logits(eng2, prompts, toks)
        got = decode_logits(eng, prompts, toks)
        res[f"B={B}"] = dict(max_abs_diff=[float((x - y).abs().max()) for x, y in zip(got, ref_out)],
                             argmax_equal=[bool(torch.equal(x.argmax(-1), y.argmax(-1))) for x, y in zip(got, ref_out)],
                             logit_scale=float(ref_out[-1].abs().max()), graphs=n_graphs(eng))
    R["graph_vs_eager"] = res; save(); print("graph_vs_eager", json.dumps(res), flush=True)
except Exception:
    fail("graph_vs_eager")

# ---- 1b. triton kernels vs their plain-torch twins, end to end (the only GPU check of the fused kernels) ------
# Two views of eng2's runner (same weights, same joined shared expert, same KV pool: no second copy of the
# experts): ops="triton" (real kernels, eager) and ops="torch" (reference.py twins). The twin's greedy tokens
# are fed to both, so every step compares the same inputs. In BENCH_TINY the triton side is the interpreter.
try:
    import copy
    from angelcli.engine.triton_backend import _Ops
    def view(which):
        net = copy.copy(eng2.net)
        net.ops, net.graphs, net.cuda_graphs = _Ops(which), None, False
        return net
    nets = {"triton": view("triton"), "torch": view("torch")}
    P, STEPS = (32, 8) if not TINY else (6, 2)
    t0 = time.time(); res = {}
    for B in (1, 3):
        g = torch.Generator().manual_seed(11 + B)
        ids = torch.randint(0, cfg.vocab_size, (B, P), generator=g).to(DEV)
        caches = {k: n.new_cache(B, P + STEPS + 2) for k, n in nets.items()}
        rows, tok = [], None
        try:
            for step in range(STEPS + 1):
                inp = ids if step == 0 else tok[:, None]
                with torch.no_grad():
                    lg = {k: n(inp, caches[k], last_only=True).logits.float()[:, -1] for k, n in nets.items()}  # [B, V]
                ref_l, got = lg["torch"], lg["triton"]
                top2 = ref_l.topk(2, dim=-1).values
                scale = float(ref_l.abs().max())
                rows.append(dict(step="prefill" if step == 0 else f"decode{step}",
                                 max_abs_diff=float((got - ref_l).abs().max()),
                                 rel_to_logit_scale=float((got - ref_l).abs().max()) / max(scale, 1e-30),
                                 argmax_equal=[bool(x) for x in (got.argmax(-1) == ref_l.argmax(-1)).tolist()],
                                 min_top2_margin=float((top2[:, 0] - top2[:, 1]).min())))
                tok = ref_l.argmax(-1)
        finally:
            for c in caches.values():
                c.reset()
        res[f"B={B}"] = dict(prompt=P, steps=rows,
                             worst_rel=max(r["rel_to_logit_scale"] for r in rows),
                             argmax_agree=f"{sum(sum(r['argmax_equal']) for r in rows)}/{sum(len(r['argmax_equal']) for r in rows)}")
        R["triton_vs_torch_ops"] = dict(res, seconds=round(time.time() - t0, 1)); save()
    print("triton_vs_torch_ops", json.dumps({k: (v["worst_rel"], v["argmax_agree"]) for k, v in res.items()}),
          f"{time.time() - t0:.1f}s", flush=True)
    del nets
except Exception:
    fail("triton_vs_torch_ops")

# ---- 2. generate_batch timing -----------------------------------------------------------------------------
shapes = [(1, 1024), (32, 1024), (1, 8192), (32, 8192)] if not TINY else [(1, 64), (4, 64)]
ntok = 33 if not TINY else 5
try:
    for B, ctx in shapes:
        run(eng, B, ctx, ntok, "cold: new cache width, graph captured inside the decode window")
        run(eng, B, ctx, ntok, "warm: same shapes again, graph reused")
except Exception:
    fail("runs")

# ---- 3. eager decode: host cost and kernels per step ------------------------------------------------------
try:
    run(eng2, 1, shapes[0][1], 9, "eager (cuda_graphs=False)")
    cache = eng2.new_cache(1, 1100)
    eng2.prefill([(i * 7919) % cfg.vocab_size for i in range(1, 1025)], cache)
    sync()
    tok = torch.tensor([7], device=DEV)
    eng2.decode_step(tok, cache); sync()
    from torch.profiler import ProfilerActivity, profile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEV == "cuda" else [])
    with profile(activities=acts) as prof:
        t1 = time.perf_counter(); eng2.decode_step(tok, cache); t2 = time.perf_counter(); sync(); t3 = time.perf_counter()
    t4 = time.perf_counter(); eng2.decode_step(tok, cache); t5 = time.perf_counter(); sync(); t6 = time.perf_counter()
    evs = [e for e in prof.key_averages() if str(getattr(e, "device_type", "")).endswith("CUDA")]
    R["eager_step"] = dict(kernels_per_step=sum(e.count for e in evs), layers=L,
                           host_enqueue_ms_unprofiled=round((t5 - t4) * 1e3, 3), step_ms_unprofiled=round((t6 - t4) * 1e3, 3),
                           host_enqueue_ms_profiled=round((t2 - t1) * 1e3, 3),
                           by_kernel=sorted(((e.count, e.key[:90]) for e in evs), reverse=True)[:30])
    cache.reset(); save(); print("eager_step", json.dumps(R["eager_step"])[:1500], flush=True)
except Exception:
    fail("eager_step")

if DEV == "cuda":
    import triton.testing as tt
    # ---- 4. GPU time of graph replays alone, and of the lm_head GEMV ------------------------------------
    try:
        rep = {}
        for key, (graph, _bufs) in list(eng.net.graphs.graphs.items()):
            graph.replay(); sync()
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            for _ in range(20):
                graph.replay()
            e.record(); sync()
            rep[str(key)] = round(s.elapsed_time(e) / 20, 4)
        R["graph_replay_ms"] = rep
        h1 = torch.randn(1, cfg.hidden_size, device=DEV, dtype=torch.bfloat16)
        R["lm_head_ms_b1"] = round(tt.do_bench_cudagraph(lambda: torch.nn.functional.linear(h1, model.lm_head.weight)), 4)
        R["max_memory_allocated_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
        save(); print("graph_replay_ms", rep, "lm_head_ms", R["lm_head_ms_b1"], flush=True)
    except Exception:
        fail("replay")
    # ---- 5. kernel micro-benchmarks: eager (host cost included) vs CUDA graph (GPU only). Each call walks the
    #      layers' own weights, so repeated runs do not measure the 60 MB L2; times are per layer ------------------
    try:
        from angelcli import ops
        from angelcli.ops.align import moe_align
        from angelcli.ops.tuning import moe_config
        mic = []
        def both(name, fn, n, nbytes):
            fn(); sync()
            e_ms = tt.do_bench(fn, warmup=10, rep=50) / n
            g_ms = tt.do_bench_cudagraph(fn, rep=50) / n
            row = dict(kernel=name, per_layer_eager_ms=round(e_ms, 4), per_layer_graph_ms=round(g_ms, 4),
                       graph_GBps=round(nbytes / g_ms / 1e6, 1) if nbytes else None)
            mic.append(row); R["micro"] = mic; save(); print(json.dumps(row), flush=True)
        moes = [l.mlp for l in model.model.layers if hasattr(l.mlp, "experts")]
        H = cfg.hidden_size
        for m in (1, 32, 512, 4096):
            use = moes if m <= 32 else moes[:4]
            x = torch.randn(m, H, device=DEV, dtype=torch.bfloat16)
            wts, ids = ops.route(torch.randn(m, cfg.num_experts, device=DEV), moes[0].gate.expert_bias, 8, 8, 4, 2.5)
            hit = int(torch.unique(ids).numel())
            both(f"fused_moe fp8 M={m} ({hit} experts hit)",
                 lambda: [ops.fused_moe(x, l.experts.w13, l.experts.w2, wts, ids, w13_scale=l.experts.w13_scale,
                                        w2_scale=l.experts.w2_scale) for l in use], len(use),
                 hit * 3 * H * moes[0].experts.inter)
            xq = ops.quantize_act_fp8(x)
            both(f"fused_moe fp8 M={m} pre-quantised x",
                 lambda: [ops.fused_moe(xq, l.experts.w13, l.experts.w2, wts, ids, w13_scale=l.experts.w13_scale,
                                        w2_scale=l.experts.w2_scale) for l in use], len(use),
                 hit * 3 * H * moes[0].experts.inter)
            if m in (1, 32):
                l0 = use[0]; se = l0.shared_experts
                comb = ops.append_shared_expert(l0.experts.w13, l0.experts.w2, se.gate_proj.weight, se.up_proj.weight,
                                                se.down_proj.weight, w13_scale=l0.experts.w13_scale,
                                                w2_scale=l0.experts.w2_scale, gate_scale=se.gate_proj.weight_scale,
                                                up_scale=se.up_proj.weight_scale, down_scale=se.down_proj.weight_scale)
                w2s, ids2 = ops.shared_expert_routing(wts, ids, cfg.num_experts, comb[4])
                both(f"fused_moe fp8 M={m} + shared expert as extra expert (1 layer)",
                     lambda: ops.fused_moe(xq, comb[0], comb[1], w2s, ids2, w13_scale=comb[2], w2_scale=comb[3]),
                     1, (hit + 1) * 3 * H * moes[0].experts.inter)
                del comb
            bm = moe_config(m, cfg.num_experts, moes[0].experts.inter, 8, "fp8_block", x.device)[0]["BLOCK_SIZE_M"]
            both(f"moe_align M={m} block_m={bm}", lambda: moe_align(ids, cfg.num_experts, bm), 1, 0)
        layers = model.model.layers
        groups = {"qkv 5120x4096": [l.attention.query_key_value for l in layers],
                  "dense 4096x4096": [l.attention.dense for l in layers],
                  "shared gate 1024x4096": [l.shared_experts.gate_proj for l in moes],
                  "shared down 4096x1024": [l.shared_experts.down_proj for l in moes],
                  "layer0 gate,up 9216x4096 + down 4096x9216": [layers[0].mlp.gate_proj, layers[0].mlp.up_proj,
                                                               layers[0].mlp.down_proj]}
        for name, mods in groups.items():
            xs = {k: torch.randn(1, k, device=DEV, dtype=torch.bfloat16) for k in {m.weight.shape[1] for m in mods}}
            both(f"fp8_gemm M=1 {name}", lambda: [ops.fp8_gemm(xs[m.weight.shape[1]], m.weight, m.weight_scale)
                                                  for m in mods], len(mods),
                 sum(m.weight.numel() for m in mods) / len(mods))
        x = torch.randn(1, H, device=DEV, dtype=torch.bfloat16)
        both("router as _moe does it: fp32(x) @ fp32(W)^T, M=1",
             lambda: [torch.nn.functional.linear(x.float(), l.gate.weight.float()) for l in moes], len(moes),
             moes[0].gate.weight.numel() * 10)
        both("rms_norm M=1", lambda: [ops.rms_norm(x, l.post_attention_layernorm.weight, 1e-6) for l in layers],
             len(layers), 0)
    except Exception:
        fail("micro")
# ---- 6. kernels per step as `angel bench --count-launches` reports them (if this build has it) ------------------
try:
    import subprocess
    name = R["device"] if DEV == "cuda" else "NVIDIA H200"
    for tp in (1, 2):
        p = subprocess.run([sys.executable, "-m", "angelcli", "bench", "antangelmed-fp8", "--count-launches", "--tp",
                            str(tp), "--device-name", name, "--json"], capture_output=True, text=True, timeout=120)
        try:
            R.setdefault("launches", {})[f"tp{tp}"] = json.loads(p.stdout)
        except ValueError:
            R.setdefault("launches", {})[f"tp{tp}"] = {"rc": p.returncode, "stderr": p.stderr[-600:]}
    save(); print("launches", json.dumps(R["launches"])[:1500], flush=True)
except Exception:
    fail("launches")
print("done", flush=True)
