"""Floor 3, beside plan: integrations of thrlab's THR with other training stacks; each imports its library lazily.

- `thrlab.integrations.trl`: THR inside TRL's GRPOTrainer (accelerate / DeepSpeed / vLLM),
  with `thrlab.integrations.groups` for how THR sees a whole group under data parallelism.
"""
