"""Floor 3, planning a GPU run on a CPU: rehearse a step at the real model's width with random
weights (`rehearsal`) and read each phase's seconds and memory (`profiling`), beside the memory
plan of thrlab.train.memory.
"""
