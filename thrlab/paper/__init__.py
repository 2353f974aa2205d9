"""Floor 4, the paper's experiments: grids of runs and their tables (`grid`), the pre-registered
study and its claims (`study`, `frontier`), THR's anatomy (`anatomy`) and step-effect predictor
(`predictor`), figures (`plotting`), and `reproduce`, which re-runs every notebook. Above the
library, never below it; the tables and figures read run folders without torch.
"""
