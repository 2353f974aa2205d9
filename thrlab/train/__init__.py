"""Floor 2, a training run: config and presets, the model with LoRA, rollouts, the GRPO step,
evaluation, checkpoints and run folders.

- `config`, `presets`: every knob (one flat Config), the named presets and METHODS recipes, run ids.
- `model`, `rollout`, `tiny`, `packaged`: loading a (4-bit) policy with adapters; sampling; the
  embedded model; real models shipped in registry packages (SmolLM2-135M-Instruct).
- `trainer` (the algorithm box), `old_policy`, `step`: one GRPO step, the old-policy pass, and the
  micro-batch / OOM / NaN machinery around it.
- `evaluate`, `probes`, `drift`, `records`, `snapshot`: greedy and pass@k evaluation, the in-run
  probes, distance from the start, per-token THR records, THR of a policy's rollouts (no update).
- `experiment`: a whole run (cold start, evaluation before, training, evaluation after), resumable.
- `runs`, `checkpoint`, `tracking`, `faults`, `memory`, `model_cards`: run folders, checkpoints,
  TensorBoard/W&B mirrors, fault injection for tests, the memory plan printed before a GPU run.
"""
