"""Floor 1, the tasks: what a prompt is, what its gold answer is, and how a completion is graded.

- `task`: the Task object and its registry (arithmetic, strategies, benchmark, your own JSONL).
- `arithmetic`, `chains`: the embedded synthetic families (a*b; chains whose strategy is a choice).
- `word_problems`: one-line word problems for a small pretrained chat model (answer after ####).
- `benchmarks`: MATH500, AIME, AMC, Minerva, OlympiadBench, GSM8K, MATH train from a local JSONL
  or the hub; prompt templates.
- `rewards`: answer extraction and grading (exact integers, math-verify in a worker pool).
"""
