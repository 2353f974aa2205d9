"""Floor 4, the paper's experiments: grids of runs and their tables (`grid`, `paired`), the
pre-registered studies and their claims (`study`, `controls`, `frontier`), THR's anatomy
(`anatomy`) and step-effect predictor (`predictor`), figures (`plotting`), `reproduce`, which
re-runs every notebook, and `lab`, the save hook that keeps `make lab` from writing outputs into
the tracked notebooks. Above the library, never below it; the tables and figures read run
folders without torch.
"""
