"""How THR sees a whole group when a group's G responses sit on several data-parallel ranks.

TRL lays a generation batch out group-major over ranks: rank r holds the global rows
[r*b, (r+1)*b) of B = W*b rows, and rows g*G .. g*G+G-1 are the G responses of prompt g. When b is
a multiple of G every group lies on one rank and THR needs no communication. Otherwise at most
W-1 groups straddle two or more ranks (when b >= G; every group when b < G). THR of a token needs
its group's correct responses (the anchors, through M = sum_i w_i sum_k g h^T), tau needs every
correct response's mean THR, and the quantile tau, NTHR's success rate and advantage-weighted THR
need the whole group. So the ranks exchange the rows (hidden states, tokens, mask) of the
straddling groups only; each rank then calls `thrlab.core.reweight.thr_token_advantages` on whole groups,
which keeps THR exact and defined in one place. Per step, each rank receives at most
(W-1)*G*T*H hidden values when b >= G. Probabilities are never sent: every rank recomputes them
from h and the replicated unembedding W.

Each group's THR statistics are counted once, by its owner (the rank holding the group's first
row), and `merge_thr_stats` combines the owners' statistics into what one process would log.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GroupLayout:
    """Which groups rank `rank` touches, owns and shares; b local rows, group size G."""

    rank: int
    b: int
    G: int

    @property
    def start(self) -> int:
        return self.rank * self.b  # global index of local row 0

    def groups(self) -> list[int]:
        """Groups with at least one local row, in order."""
        return list(range(self.start // self.G, (self.start + self.b - 1) // self.G + 1))

    def owner(self, g: int) -> int:
        return g * self.G // self.b  # the rank holding the group's first row

    def is_local(self, g: int) -> bool:
        """True when all G rows of group g are on this rank."""
        return self.start <= g * self.G and (g + 1) * self.G <= self.start + self.b

    def shared(self) -> list[int]:
        """Groups that straddle this rank's boundary (some rows here, some elsewhere)."""
        return [g for g in self.groups() if not self.is_local(g)]

    def local_index(self, row: int) -> int | None:
        """Local index of global row `row`, or None when another rank holds it."""
        i = row - self.start
        return i if 0 <= i < self.b else None


def exchange_shared_rows(accelerator, layout: GroupLayout, hidden, tokens, mask):
    """All-gather the local rows of straddling groups; return {global row: (h, y, m)}.

    hidden (b, T, H), tokens (b, T), mask (b, T) bool. A collective: every rank must call it.
    Rows come back padded to the largest T over ranks (hidden 0, token 0, mask False).
    """
    G, dev = layout.G, hidden.device
    shared = set(layout.shared())
    send = [i for i in range(layout.b) if (layout.start + i) // G in shared]  # local indices
    sizes = accelerator.gather(torch.tensor([len(send), hidden.shape[1]], device=dev).view(1, 2))
    s_max, t_max = (int(x) for x in sizes.view(-1, 2).max(0).values)
    s_max = max(s_max, 1)  # collectives need a non-empty tensor on every rank
    idx = torch.tensor(send, dtype=torch.long, device=dev)
    ids = torch.full((s_max,), -1, dtype=torch.long, device=dev)  # (S,) -1 = padding row
    ids[:len(send)] = idx + layout.start
    h = hidden.new_zeros(s_max, t_max, hidden.shape[2])  # (S, T_max, H)
    y = tokens.new_zeros(s_max, t_max)  # (S, T_max)
    m = torch.zeros(s_max, t_max, dtype=torch.long, device=dev)  # (S, T_max) gloo has no bool
    T = hidden.shape[1]
    h[:len(send), :T], y[:len(send), :T], m[:len(send), :T] = hidden[idx], tokens[idx], mask[idx]
    ids, h, y, m = (accelerator.gather(x.contiguous()) for x in (ids, h, y, m))  # (W*S, ...)
    return {int(r): (h[k], y[k], m[k].bool()) for k, r in enumerate(ids.tolist()) if r >= 0}


def assemble(layout: GroupLayout, groups: list[int], local: tuple, remote: dict, t_max: int):
    """Stack the G rows of each group (local or received), padded to t_max; tuple of (n*G, ...)."""
    hidden, tokens, mask = local
    rows_h, rows_y, rows_m = [], [], []
    for g in groups:
        for row in range(g * layout.G, (g + 1) * layout.G):
            i = layout.local_index(row)
            h, y, m = (hidden[i], tokens[i], mask[i]) if i is not None else remote[row]
            pad = t_max - h.shape[0]
            rows_h.append(torch.nn.functional.pad(h, (0, 0, 0, pad)))  # (T_max, H)
            rows_y.append(torch.nn.functional.pad(y, (0, pad)))  # (T_max,)
            rows_m.append(torch.nn.functional.pad(m, (0, pad)))  # (T_max,) pads False
    return torch.stack(rows_h), torch.stack(rows_y), torch.stack(rows_m)


def merge_thr_stats(parts: list[tuple[float, float, dict]]) -> dict:
    """Combine per-rank (real tokens, rows, thr_stats dict) into one process's thr/* values.

    thrlab.core.reweight.thr_stats averages over real tokens, except thr/tau (a mean over rows, i.e. over
    groups) and the thr/adv_mass_* sums; ranks that own no group contribute weight 0.
    """
    keys = sorted({k for _, _, s in parts for k in s})
    n_tok = sum(p[0] for p in parts)
    n_rows = sum(p[1] for p in parts)
    out = {}
    for k in keys:
        if "mass" in k:
            out[k] = sum(s.get(k, 0.0) for _, _, s in parts)
        elif k == "thr/tau":
            out[k] = sum(r * s.get(k, 0.0) for _, r, s in parts) / max(n_rows, 1)
        else:
            out[k] = sum(n * s.get(k, 0.0) for n, _, s in parts) / max(n_tok, 1)
    return out
