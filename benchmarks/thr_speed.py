"""THR cost and accuracy on CPU: paper shape, naive pairwise reference, vocab="group", tiny step.

    python benchmarks/thr_speed.py          # Qwen2.5-1.5B shape: V=151,936, H=1536, G=8 x 256
    python benchmarks/thr_speed.py --quick    # smoke run: T=32, naive T=16, 3 tiny GRPO steps

1. paper shape: token_hidden_reward via lm_head_weight (temperature 1, vocab="full") with
   route="factorised", "gram" and "auto": wall seconds and peak memory.
2. naive reference: the pairwise double sum with explicit (N x V) g matrices,
   THR = c * ((G_all @ G_c^T) * (H_all @ H_c^T)) @ w_c, on the paper case when its estimated peak
   fits in half the available memory (else T halved until it does; --naive-tokens forces a T),
   against the chunked routes on that same case: time ratio, peak-memory ratio, agreement.
3. vocab="group" against vocab="full" on the paper-shape case: relative L2 error, max abs error
   / max |THR|, Spearman rank correlation, fraction of sign flips and of tau-mask flips.
4. share of a tiny GRPO step: sum time/thr / sum time/step of a real GRPOTrainer (thr_mode="thr")
   on a random tiny model of the embedded preset's shape, plus a direct timing of thr_for_batch.

Synthetic inputs (random, no download): W ~ N(0, 0.3^2) (V, H); each hidden state has norm 10 and
is a mix of noise, a direction shared by all tokens (the anisotropy of real hidden states) and a
random fraction of W[y] for its own token y, so logits have std ~3 and the median pi(y) is ~0.4;
token ids are Zipf(1.1)-distributed, so responses share tokens as real ones do; response lengths
vary in [3T/4, T] (right padding); the first --correct responses have reward 1.

Memory: every measurement of sections 1-3 runs in a fresh subprocess that loads the inputs, runs a
small warm-up, then resets the kernel's peak-RSS mark (writes "5" to /proc/self/clear_refs) and
reports VmHWM - VmRSS (from /proc/self/status) around the one call: the peak resident memory the
call added on top of its inputs (W alone is V*H*4 bytes). Where the reset is not allowed it falls
back to ru_maxrss - VmRSS before the call, which also counts any earlier, higher peak (flagged in
the JSON as mem_method). Sampling threads miss short peaks; tracemalloc does not see torch.
Prints a table and, on its last line, JSON.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from thrlab.train.model import available_memory as mem_available
from thrlab.train.runs import environment_info


# -- inputs --------------------------------------------------------------------------------------
def make_case(V: int, H: int, G: int, T: int, n_correct: int, seed: int) -> dict:
    """Random inputs of one group (see the module docstring); deterministic in seed."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(V, H, generator=g) * 0.3  # (V, H) logits h.W have std |h| * 0.3 = 3
    zipf = torch.arange(1, V + 1, dtype=torch.float64).pow(-1.1).float()  # (V,) rank weights
    ids = torch.randperm(V, generator=g)  # rank -> token id
    tokens = ids[torch.multinomial(zipf, G * T, replacement=True, generator=g)]  # (G*T,)
    shared = torch.randn(H, generator=g)
    shared /= shared.norm()
    own = W[tokens] / W[tokens].norm(dim=1, keepdim=True)  # (G*T, H) direction of own token
    h = (torch.randn(G * T, H, generator=g) / math.sqrt(H) + 0.5 * shared
         + torch.rand(G * T, 1, generator=g) * 0.3 * own)
    h = 10 * h / h.norm(dim=1, keepdim=True)  # (G*T, H)
    lengths = T - torch.randint(0, T // 4 + 1, (G,), generator=g)
    lengths[0] = T
    mask = torch.arange(T)[None, :] < lengths[:, None]  # (G, T) right padding
    tokens = tokens.view(G, T) * mask
    rewards = torch.zeros(G)
    rewards[:n_correct] = 1.0
    return {"hidden": h.view(G, T, H).contiguous(), "tokens": tokens, "mask": mask,
            "rewards": rewards, "W": W}


def case_sizes(case: dict) -> dict:
    from thrlab.core.thr import route_flops

    m = case["mask"]
    n, n_c = int(m.sum()), int(m[case["rewards"] == 1].sum())
    V, H = case["W"].shape
    return {"N": n, "N_c": n_c, "V": V, "H": H, "flops": route_flops(n, n_c, V, H, True, 1024)}


def naive_thr(hidden, tokens, mask, rewards, W, temperature=1.0) -> torch.Tensor:
    """THR by the pairwise double sum (docs/method.md section 2) with explicit (N x V) g rows; (G, T)."""
    G, T, H = hidden.shape
    flat = mask.reshape(-1).nonzero().squeeze(1)  # (N,)
    h = hidden.reshape(G * T, H)[flat]  # (N, H)
    y = tokens.reshape(-1)[flat].long()  # (N,)
    resp = flat // T  # (N,)
    P = torch.softmax(h @ W.T / temperature, dim=-1)  # (N, V)
    g_all = torch.zeros_like(P).scatter_(1, y[:, None], 1.0) - P  # (N, V) e_y - pi
    del P
    w = ((1.0 / mask.sum(1).clamp(min=1)) * (rewards == 1))[resp]  # (N,) 1/|y_i| on anchors
    a = (w > 0).nonzero().squeeze(1)  # (N_c,)
    score = ((g_all @ g_all[a].T) * (h @ h[a].T)) @ w[a]  # (N,) sum over all anchor pairs
    out = torch.zeros(G, T)
    out.view(-1)[flat] = (2 * rewards - 1)[resp] * score
    return out


def naive_peak_bytes(n: int, v: int) -> int:
    """Rough peak of naive_thr: about four (N x V) fp32 matrices alive at once (logits, their
    scaled copy, probabilities, g)."""
    return 4 * n * v * 4


# -- one measurement, in its own process ---------------------------------------------------------
def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def worker(spec: dict) -> dict:
    from thrlab.core.thr import token_hidden_reward

    case = torch.load(spec["inputs"])
    torch.softmax(torch.randn(64, 64) @ torch.randn(64, 64), -1)  # warm up the kernels
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        mem_method = "VmHWM after clear_refs reset"
    except OSError:
        mem_method = "ru_maxrss (no peak reset: may include an earlier peak)"
    base_kb = _status_kb("VmRSS")
    t0 = time.perf_counter()
    if spec["impl"] == "naive":
        thr = naive_thr(case["hidden"], case["tokens"], case["mask"], case["rewards"], case["W"])
    else:
        thr = token_hidden_reward(case["hidden"], case["tokens"], case["mask"], case["rewards"],
                                  lm_head_weight=case["W"], temperature=1.0,
                                  vocab=spec["vocab"], route=spec["method"],
                                  chunk_size=spec["chunk_size"])
    wall = time.perf_counter() - t0
    if mem_method.startswith("VmHWM"):
        peak_kb = _status_kb("VmHWM")
    else:
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    torch.save(thr, spec["out"])
    return {"wall_s": wall, "peak_mb": (peak_kb - base_kb) / 1024, "base_rss_mb": base_kb / 1024,
            "mem_method": mem_method}


def measure(name: str, inputs: str, outdir: str, impl: str, method: str = "auto",
            vocab: str = "full", chunk_size: int = 1024):
    """Run one measurement in a fresh interpreter; return (result dict, THR tensor or None)."""
    out = os.path.join(outdir, name + ".pt")
    spec = {"inputs": inputs, "out": out, "impl": impl, "method": method, "vocab": vocab,
            "chunk_size": chunk_size}
    p = subprocess.run([sys.executable, __file__, "--_worker", json.dumps(spec)],
                       capture_output=True, text=True)
    if p.returncode != 0:  # e.g. killed for memory: report it, keep going
        res = {"error": f"rc={p.returncode}: {p.stderr.strip()[-300:]}"}
        print(f"  {name}: FAILED {res['error']}", flush=True)
        return res, None
    res = json.loads(p.stdout.strip().splitlines()[-1])
    print(f"  {name}: {res['wall_s']:.2f} s, peak +{res['peak_mb']:.0f} MB", flush=True)
    return res, torch.load(out)


# -- comparisons ---------------------------------------------------------------------------------
def agreement(x: torch.Tensor, ref: torch.Tensor) -> float:
    """max |x - ref| / max |ref|: the largest deviation on the scale of the scores."""
    return float((x.double() - ref.double()).abs().max() / ref.double().abs().max())


def approx_error(approx, exact, mask, rewards) -> dict:
    from thrlab.paper.predictor import spearman
    from thrlab.core.reweight import thr_threshold

    m = mask.bool()
    a, e = approx[m].double(), exact[m].double()  # real tokens only
    tau_e, tau_a = thr_threshold(exact, mask, rewards), thr_threshold(approx, mask, rewards)
    kept_e, kept_a = exact[m].abs() > tau_e, approx[m].abs() > tau_a
    return {"rel_l2": float((a - e).norm() / e.norm()),
            "max_abs_over_max": float((a - e).abs().max() / e.abs().max()),
            "spearman": spearman(a.numpy(), e.numpy()),
            "sign_flip_frac": float((torch.sign(a) != torch.sign(e)).double().mean()),
            "sign_flip_frac_kept": float((torch.sign(a) != torch.sign(e))[kept_e].double().mean())
            if kept_e.any() else 0.0,
            "frac_kept_full": float(kept_e.double().mean()),
            "tau_mask_flip_frac": float((kept_a != kept_e).double().mean()),
            "tau_full": tau_e, "tau_group": tau_a}


# -- section 4: the tiny GRPO step ---------------------------------------------------------------
class ParityGrade:
    """Reward = even number of characters: about half right for a random model (mixed groups)."""

    def __call__(self, texts, golds):
        from thrlab.tasks.rewards import GradeResult

        rewards = [float(len(t) % 2 == 0) for t in texts]
        return GradeResult(rewards=rewards, status=["correct" if r else "wrong" for r in rewards])


def tiny_step_share(steps: int, reps: int) -> dict:
    from thrlab.train.presets import from_preset
    from thrlab.train.model import load_policy
    from thrlab.train.runs import RunDir
    from thrlab.tasks.arithmetic import arithmetic_problems
    from thrlab.core.thr import thr_for_batch
    from thrlab.train.tiny import save_random_model
    from thrlab.train.trainer import GRPOTrainer

    cfg = from_preset("tiny", steps=steps, thr_mode="thr", thr_p=0.1, sft_control=False,
                      thr_save_every=0, save_every=10**6, device="cpu")
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as d:
        model, tok = load_policy(cfg, save_random_model(cfg, d), torch.device("cpu"))
        tr = GRPOTrainer(cfg, model, tok, arithmetic_problems(256, "train", seed=0),
                         RunDir(Path(d) / "run"), ParityGrade())
        rows = tr.train(progress=False)
    thr_t = [r.get("time/thr", 0.0) for r in rows]
    step_t = [r["time/step"] for r in rows]
    # the same THR call on random tensors of the preset's shape, timed alone
    G, P, T, H = cfg.group_size, cfg.prompts_per_step, cfg.max_new_tokens, cfg.tiny_hidden
    V = len(tok)
    hidden = torch.randn(G * P, T, H)
    tokens = torch.randint(0, V, (G * P, T))
    mask = torch.ones(G * P, T, dtype=torch.bool)
    rewards = (torch.rand(G * P) > 0.5).float()
    W = torch.randn(V, H) * 0.1
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        thr_for_batch(hidden, tokens, mask, rewards, G, lm_head_weight=W)
        times.append(time.perf_counter() - t0)
    return {"steps": len(rows), "groups": P, "G": G, "T": T, "H": H, "V": V,
            "time_thr": thr_t, "time_step": step_t,
            "thr_overhead_frac": sum(thr_t) / sum(step_t),
            "thr_overhead_frac_median": statistics.median(a / b for a, b in zip(thr_t, step_t)),
            "step_s_median": statistics.median(step_t),
            "thr_s_median_in_trainer": statistics.median(thr_t),
            "thr_for_batch_s_median_direct": statistics.median(times)}


# -- driver --------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="T=32 and 3 tiny GRPO steps")
    ap.add_argument("--vocab-size", type=int, default=151936)
    ap.add_argument("--hidden", type=int, default=1536)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=None, help="T per response (default 256)")
    ap.add_argument("--correct", type=int, default=3)
    ap.add_argument("--naive-tokens", type=int, default=None,
                    help="T of section 2 (default: the largest of T, T/2, ... whose estimated "
                         "naive peak fits in half the available memory)")
    ap.add_argument("--chunk-size", type=int, default=1024)
    ap.add_argument("--tiny-steps", type=int, default=None, help="GRPO steps (default 6)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._worker is not None:
        print(json.dumps(worker(json.loads(args._worker))))
        return
    T = args.tokens or (32 if args.quick else 256)
    Tn = args.naive_tokens or T
    tiny_steps = args.tiny_steps or (3 if args.quick else 6)
    V, H, G = args.vocab_size, args.hidden, args.group_size
    if args.naive_tokens is None:  # the largest size the naive reference can still hold
        while Tn > 1 and naive_peak_bytes(G * Tn, V) > 0.5 * mem_available():
            Tn //= 2
    t_start = time.perf_counter()
    res = {"machine": environment_info(), "shape": {"V": V, "H": H, "G": G, "T": T, "correct": args.correct,
                                            "naive_T": Tn, "chunk_size": args.chunk_size}}
    with tempfile.TemporaryDirectory() as tmp:
        # 1. paper shape: the three routes ------------------------------------------------------
        paper = make_case(V, H, G, T, args.correct, args.seed)
        res["paper_case"] = case_sizes(paper)
        paper["V_group"] = int(torch.unique(paper["tokens"][paper["mask"]]).numel())
        res["paper_case"]["V_group"] = paper["V_group"]
        inp = os.path.join(tmp, "paper.pt")
        torch.save({k: v for k, v in paper.items() if torch.is_tensor(v)}, inp)
        print(f"1. paper shape G={G} x T={T}, V={V}, H={H}: N={res['paper_case']['N']}, "
              f"N_c={res['paper_case']['N_c']}", flush=True)
        thr_p, sec1 = {}, {}
        for method in ("factorised", "gram", "auto"):
            sec1[method], thr_p[method] = measure(f"paper_{method}", inp, tmp, "thr", method,
                                                  chunk_size=args.chunk_size)
        f = res["paper_case"]["flops"]
        res["paper"] = dict(sec1, auto_route=min(f, key=f.get))
        if thr_p["factorised"] is not None and thr_p["gram"] is not None:
            res["paper"]["gram_vs_factorised_max_err"] = agreement(thr_p["gram"],
                                                                  thr_p["factorised"])
        # 3. vocab="group" on the same case -------------------------------------------------------
        print("3. vocab='group' vs 'full' (paper shape, method=auto)", flush=True)
        grp, thr_grp = measure("paper_group", inp, tmp, "thr", "auto", vocab="group",
                               chunk_size=args.chunk_size)
        full = thr_p["factorised"] if thr_p["factorised"] is not None else thr_p["gram"]
        res["group_vocab"] = dict(grp, V_group=paper["V_group"])
        if thr_grp is not None and full is not None:
            res["group_vocab"].update(approx_error(thr_grp, full, paper["mask"],
                                                   paper["rewards"]))
        # 2. naive pairwise reference: on the paper case itself when it fits in memory ---------
        est = naive_peak_bytes(G * Tn, V)
        print(f"2. naive pairwise vs chunked: estimated naive peak {est / 2**30:.1f} GiB, "
              f"{mem_available() / 2**30:.1f} GiB available", flush=True)
        if Tn == T:
            case, thr_routes, sec2 = res["paper_case"], thr_p, {m: dict(sec1[m]) for m in sec1}
        else:
            small = make_case(V, H, G, Tn, args.correct, args.seed + 1)
            case = case_sizes(small)
            inp = os.path.join(tmp, "small.pt")
            torch.save({k: v for k, v in small.items() if torch.is_tensor(v)}, inp)
            del small
            thr_routes, sec2 = {}, {}
            for method in ("factorised", "gram", "auto"):
                sec2[method], thr_routes[method] = measure(f"small_{method}", inp, tmp, "thr",
                                                           method, chunk_size=args.chunk_size)
        del paper
        res["naive_case"] = dict(case, T=Tn, naive_peak_est_gib=est / 2**30)
        naive, thr_n = measure("naive", inp, tmp, "naive")
        sec2["naive"] = naive
        for method in ("factorised", "gram", "auto"):
            r = sec2[method]
            if thr_routes[method] is not None and thr_n is not None:
                r.update(naive_over_route_time=naive["wall_s"] / r["wall_s"],
                         naive_over_route_peak=naive["peak_mb"] / max(r["peak_mb"], 1e-9),
                         max_err_vs_naive=agreement(thr_routes[method], thr_n))
        res["naive_vs_chunked"] = sec2
    # 4. share of a tiny GRPO step ---------------------------------------------------------------
    print(f"4. tiny GRPO step share ({tiny_steps} steps, thr_mode=thr)", flush=True)
    res["tiny_grpo"] = tiny_step_share(tiny_steps, reps=20)
    res["total_wall_s"] = time.perf_counter() - t_start

    # -- table -----------------------------------------------------------------------------------
    def row(label, r, extra=""):
        if "error" in r:
            return f"{label:<34} FAILED {r['error'][:60]}"
        return f"{label:<34} {r['wall_s']:>9.2f} {r['peak_mb']:>10.0f}  {extra}"

    pc, nc = res["paper_case"], res["naive_case"]
    W_mb = V * H * 4 / 2**20
    print(f"\nmachine: {res['machine']['cpu']}, {res['machine']['cpu_count']} CPUs, "
          f"torch {res['machine']['packages']['torch']} with {res['machine']['torch_threads']} threads")
    print(f"memory: peak RSS added by the call over its inputs (W alone is {W_mb:.0f} MB), "
          f"{sec1['factorised'].get('mem_method', '?')}")
    print(f"\n{'case / route':<34} {'wall s':>9} {'peak +MB':>10}  notes")
    print(f"-- paper shape G={G} x T={T} (N={pc['N']}, N_c={pc['N_c']}), V={V}, H={H}")
    for m in ("factorised", "gram", "auto"):
        note = f"-> {res['paper']['auto_route']}" if m == "auto" else ""
        print(row(f"  method={m}", sec1[m], note))
    if "gram_vs_factorised_max_err" in res["paper"]:
        print(f"  gram vs factorised: max |diff| / max |THR| = "
              f"{res['paper']['gram_vs_factorised_max_err']:.2e}")
    gv = res["group_vocab"]
    print(row(f"  vocab=group (V_g={gv['V_group']})", gv))
    print(f"-- naive pairwise, G={G} x T={Tn} (N={nc['N']}, N_c={nc['N_c']})")
    print(row("  naive (N x V) g matrices", sec2["naive"]))
    for m in ("factorised", "gram", "auto"):
        r = sec2[m]
        note = (f"naive/route: time {r['naive_over_route_time']:.2f}x, peak "
                f"{r['naive_over_route_peak']:.2f}x, max err {r['max_err_vs_naive']:.1e}"
                if "max_err_vs_naive" in r else "")
        print(row(f"  method={m}", r, note))
    if "rel_l2" in gv:
        print(f"\nvocab='group' vs 'full' (paper shape, {pc['N']} real tokens):")
        print(f"  relative L2 error {gv['rel_l2']:.3e}, max |err| / max |THR| "
              f"{gv['max_abs_over_max']:.3e}, Spearman {gv['spearman']:.6f}, "
              f"sign flips {gv['sign_flip_frac']:.4f} of all tokens, "
              f"{gv['sign_flip_frac_kept']:.4f} of those with |THR| > tau "
              f"({gv['frac_kept_full']:.3f} of tokens), "
              f"tau-mask flips {gv['tau_mask_flip_frac']:.4f}")
    tg = res["tiny_grpo"]
    print(f"\ntiny GRPO ({tg['groups']} groups x G={tg['G']}, T={tg['T']}, H={tg['H']}, "
          f"V={tg['V']}, {tg['steps']} steps): time/thr / time/step = "
          f"{tg['thr_overhead_frac']:.4f} (median per step {tg['thr_overhead_frac_median']:.4f}); "
          f"step {tg['step_s_median']:.3f} s, thr {tg['thr_s_median_in_trainer'] * 1e3:.1f} ms "
          f"in the trainer, "
          f"{tg['thr_for_batch_s_median_direct'] * 1e3:.1f} ms alone")
    print(f"total {res['total_wall_s']:.0f} s")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
