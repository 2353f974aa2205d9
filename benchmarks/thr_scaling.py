"""THR time and memory against tokens per group (N) and vocabulary size (V): the chunked routes
against the naive pairwise double sum.

    python benchmarks/thr_scaling.py            # H = 1536; N sweep at V = 32,768; V sweep at T = 256
    python benchmarks/thr_scaling.py --quick    # smoke run: H = 64, tiny grid

Cost per group (multiply-adds, streamed from h W^T; docs/method.md section 2):
  naive       N V H (all probability rows) + N N_c V (all pairs, explicit N x V g rows); memory
              about four N x V matrices
  factorised  (2N + N_c) V H through the V x H matrix M (rows of the last anchor chunk reused);
              memory M plus one chunk of rows
  gram        N V H + N N_c (V + H) against the N_c anchors (each row made once when N_c fits a
              chunk); memory two chunks of rows
With N_c proportional to N the pair term makes naive and gram grow as N^2 V, factorised as N V H.
Each point runs in a fresh process (thr_speed.py's worker; `--in-process` for smoke runs): wall
seconds and the peak resident memory the call adds over its inputs. Naive points whose estimated peak exceeds
`--naive-mem-frac` of the available memory are skipped (reported, not run). The table gives the
log-log slope of time against N per route. Inputs are thr_speed.py's synthetic groups (Zipf token
ids, 3 of 8 responses correct, lengths in [3T/4, T]). `--with-logits` adds, to the V sweep,
THR computed from given (G, T, V) logits (`logits=`, as an on-policy update pass could hand them
over) instead of recomputing h W^T: time only, in process. The last line printed is JSON.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time

import torch

# thr_speed.py beside this script (a script's folder is on sys.path): its synthetic groups,
# memory estimate and measuring worker, so both benchmarks time the same thing
import thr_speed
from thr_speed import make_case, mem_available, naive_peak_bytes
from thrlab.train.runs import environment_info

ROUTES = ("naive", "factorised", "gram")


def measure(name, inp, tmp, impl, method, chunk_size, in_process: bool):
    """thr_speed's measurement: a fresh process, or (smoke runs) this one."""
    if not in_process:
        return thr_speed.measure(name, inp, tmp, impl, method, chunk_size=chunk_size)
    out = os.path.join(tmp, name + ".pt")
    res = thr_speed.worker({"inputs": inp, "out": out, "impl": impl, "method": method,
                            "vocab": "full", "chunk_size": chunk_size})
    return res, torch.load(out)


def logits_given(inp: str, est_row: dict, chunk: int, tmp: str, V: int, T: int) -> list[dict]:
    """Time THR with the (G, T, V) logits given (in this process; time only)."""
    from thrlab.core.thr import route_flops, token_hidden_reward

    case = torch.load(inp)
    logits = case["hidden"] @ case["W"].T  # (G, T, V), what the update pass already holds
    n, n_c = est_row["N"], est_row["N_c"]
    est = route_flops(n, n_c, V, case["W"].shape[1], False, chunk)
    rows = []
    for route in ("factorised", "gram"):
        t0 = time.perf_counter()
        thr = token_hidden_reward(case["hidden"], case["tokens"], case["mask"], case["rewards"],
                                  logits=logits, route=route, chunk_size=chunk)
        row = {k: est_row[k] for k in ("V", "H", "G", "T", "N", "N_c")}
        row.update(route=f"{route}+logits", madds_est=est[route],
                   wall_s=time.perf_counter() - t0, peak_mb=None,
                   mem_method="not measured (in process)")
        torch.save(thr, os.path.join(tmp, f"thr_{V}_{T}_{route}+logits.pt"))
        rows.append(row)
    return rows


def run_point(V: int, H: int, G: int, T: int, correct: int, seed: int, chunk: int,
              naive_mem_frac: float, tmp: str, in_process: bool = False,
              with_logits: bool = False) -> list[dict]:
    """Measure every route on one synthetic group; one row per route."""
    from thrlab.core.thr import route_flops

    case = make_case(V, H, G, T, correct, seed)
    n, n_c = int(case["mask"].sum()), int(case["mask"][case["rewards"] == 1].sum())
    inp = os.path.join(tmp, f"case_{V}_{T}.pt")
    torch.save({k: v for k, v in case.items() if torch.is_tensor(v)}, inp)
    del case
    est = route_flops(n, n_c, V, H, True, chunk)
    est["naive"] = n * V * H + n * n_c * V
    rows = []
    for route in ROUTES:
        row = {"V": V, "H": H, "G": G, "T": T, "N": n, "N_c": n_c, "route": route,
               "madds_est": est[route]}
        if route == "naive" and naive_peak_bytes(n, V) > naive_mem_frac * mem_available():
            row["skipped"] = (f"estimated peak {naive_peak_bytes(n, V) / 2**30:.1f} GiB > "
                              f"{naive_mem_frac:.0%} of available memory")
            print(f"  V={V} T={T} naive: skipped ({row['skipped']})", flush=True)
        else:
            res, thr = measure(f"V{V}_T{T}_{route}", inp, tmp,
                               "naive" if route == "naive" else "thr", route, chunk, in_process)
            row.update(res)
            if thr is not None:
                torch.save(thr, os.path.join(tmp, f"thr_{V}_{T}_{route}.pt"))
        rows.append(row)
    if with_logits:  # the update pass's logits handed to THR: no h W^T recomputation
        rows += logits_given(inp, est_row=rows[0], chunk=chunk, tmp=tmp, V=V, T=T)
    ref = os.path.join(tmp, f"thr_{V}_{T}_naive.pt")
    if os.path.exists(ref):  # agreement with the pairwise reference
        want = torch.load(ref).double()
        for row in rows:
            path = os.path.join(tmp, f"thr_{V}_{T}_{row['route']}.pt")
            if row["route"] == "naive":
                continue
            if os.path.exists(path):
                got = torch.load(path).double()
                row["max_err_vs_naive"] = float((got - want).abs().max() / want.abs().max())
    os.remove(inp)
    return rows


def slopes(rows: list[dict], key: str = "N") -> dict:
    """Least-squares slope of log(wall) against log(key) per route (points with a time)."""
    out = {}
    for route in ROUTES:
        pts = [(math.log(r[key]), math.log(r["wall_s"])) for r in rows
               if r["route"] == route and "wall_s" in r]
        if len(pts) >= 2:
            mx = sum(x for x, _ in pts) / len(pts)
            my = sum(y for _, y in pts) / len(pts)
            den = sum((x - mx) ** 2 for x, _ in pts)
            out[route] = sum((x - mx) * (y - my) for x, y in pts) / den if den else None
    return out


def format_rows(rows: list[dict]) -> str:
    lines = [f"{'V':>7} {'T':>5} {'N':>5} {'N_c':>5} {'route':<17} {'wall s':>8} {'peak +MB':>9} "
             f"{'GMadd est':>10} {'err vs naive':>12}"]
    for r in rows:
        if "wall_s" in r:
            peak = f"{r['peak_mb']:9.0f}" if r.get("peak_mb") is not None else f"{'-':>9}"
            wall = f"{r['wall_s']:8.2f}"
        else:
            wall, peak = f"{'skipped' if 'skipped' in r else 'FAILED':>8}", f"{'-':>9}"
        err = f"{r['max_err_vs_naive']:12.1e}" if "max_err_vs_naive" in r else f"{'':>12}"
        lines.append(f"{r['V']:>7} {r['T']:>5} {r['N']:>5} {r['N_c']:>5} {r['route']:<17} "
                     f"{wall} {peak} {r['madds_est'] / 1e9:10.1f} {err}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=1536, help="H (Qwen2.5-1.5B: 1536)")
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--correct", type=int, default=3)
    ap.add_argument("--tokens", type=int, nargs="+", default=[64, 128, 256, 512, 1024],
                    help="T per response of the N sweep")
    ap.add_argument("--vocab", type=int, default=32768, help="V of the N sweep")
    ap.add_argument("--vocabs", type=int, nargs="+", default=[8192, 32768, 65536, 151936],
                    help="V of the vocabulary sweep")
    ap.add_argument("--vocab-tokens", type=int, default=256, help="T of the vocabulary sweep")
    ap.add_argument("--chunk-size", type=int, default=1024)
    ap.add_argument("--naive-mem-frac", type=float, default=0.4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    ap.add_argument("--with-logits", action="store_true",
                    help="V sweep: also time THR given the logits (the update pass holds them)")
    ap.add_argument("--in-process", action="store_true",
                    help="measure in this process (faster, memory less isolated)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run in process: H=64, T in (8, 16), V in (512, 1024)")
    ap.add_argument("--json", action="store_true", help="(the JSON line is always printed last)")
    args = ap.parse_args()
    if args.quick:
        args.hidden, args.tokens, args.vocab = 64, [8, 16], 512
        args.vocabs, args.vocab_tokens, args.in_process = [512, 1024], 8, True
    if args.threads:  # this process and the measurement processes it starts
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    t0 = time.perf_counter()
    H, G = args.hidden, args.group_size
    res = {"machine": environment_info(), "H": H, "G": G, "correct": args.correct,
           "chunk_size": args.chunk_size,
           "measured": "in process" if args.in_process else "one fresh process per point"}
    with tempfile.TemporaryDirectory() as tmp:
        print(f"N sweep: V={args.vocab}, H={H}, T in {args.tokens}", flush=True)
        n_rows = []
        for T in args.tokens:
            n_rows += run_point(args.vocab, H, G, T, args.correct, args.seed, args.chunk_size,
                                args.naive_mem_frac, tmp, args.in_process)
        print(f"V sweep: T={args.vocab_tokens}, H={H}, V in {args.vocabs}", flush=True)
        v_rows = []
        for V in args.vocabs:
            v_rows += run_point(V, H, G, args.vocab_tokens, args.correct, args.seed,
                                args.chunk_size, args.naive_mem_frac, tmp, args.in_process,
                                args.with_logits)
    res.update({"n_sweep": n_rows, "v_sweep": v_rows, "slope_time_vs_N": slopes(n_rows),
                "slope_time_vs_V": slopes(v_rows, "V"), "wall_s": time.perf_counter() - t0})
    print(f"\nmachine: {res['machine']['cpu']}, torch threads {res['machine']['torch_threads']}")
    print("-- N sweep\n" + format_rows(n_rows))
    print("-- V sweep\n" + format_rows(v_rows))
    print("log-log slope of time vs N: " + ", ".join(
        f"{k} {v:.2f}" for k, v in res["slope_time_vs_N"].items() if v is not None))
    print("log-log slope of time vs V: " + ", ".join(
        f"{k} {v:.2f}" for k, v in res["slope_time_vs_V"].items() if v is not None))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
