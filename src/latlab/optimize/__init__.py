"""``latlab optimize``: apply latency recipes one at a time, measure each, gate each on quality.

Modules: ``quality`` (logit and greedy-output comparison against the baseline), ``generation``
(the greedy and prompt-lookup decoding loops used for the transformers backend), ``recipes``
(one small object per optimization), ``noise`` (when a measured change counts), ``plan_file``
(TOML/YAML plans), ``lab`` (the baseline -> each recipe -> combined loop) and ``report`` (table,
decision record, JSON).
"""
