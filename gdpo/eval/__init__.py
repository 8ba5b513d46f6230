"""`gdpo eval`: lm-evaluation-harness tasks on local data, suites, and deltas against a baseline.

- gdpo/eval/tasks/*.yaml: lm-eval task configs (package data) that read local files through metakl's ingest presets
  (gdpo.eval.data.load) and score with metakl.verify (gdpo.eval.hooks).
- gdpo/eval/suites/*.yaml: `paper` (the paper's 12 benchmarks, offline-impossible ones marked) and `cpu-small`.
- gdpo.eval.runner.evaluate_model: run a suite with lm-eval (HFLM or VLLM), plus drift (NLL, KL to the baseline).
- gdpo.eval.report: bootstrap intervals, paired deltas, the markdown table, the delta plot.
"""
