"""Floor 0, the maths: tensors and numbers in, tensors and numbers out; nothing here reads a config
or a run folder.

- `thr`: Token Hidden Reward (docs/method.md section 2), exact, streamed over the vocabulary.
- `reweight`: the token advantages THR drives (threshold, THR-GRPO, NTHR, the controls).
- `loss`: GRPO's advantages, ratios, clipped surrogate, KL, aggregation and the baselines.
- `variants`: the one list of the names a config may choose for each of those families.
- `passk`, `stats`: unbiased pass@k; paired intervals over seeds and problems.
- `unembed`, `guards`, `seeds`, `errors`: the unembedding product, NaN/OOM guards, seed streams,
  the error types every message is raised as.
"""
