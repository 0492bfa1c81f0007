"""``latlab optimize``: apply latency recipes one at a time, measure each, gate each on quality.

Modules: ``recipes`` (one small object per optimization), ``subject`` (the configuration a
recipe changes: model, decoding loop, engine options, request handling), ``lab_workload``
(prompts cut from held-out text), ``generation`` (greedy and prompt-lookup decoding loops for
the transformers backend), ``passes`` (serves the workload and times every token into
latlab.metrics records), ``quality`` (logit and greedy-output comparison against the
baseline), ``noise`` (when a measured change counts), ``lab_plan`` (TOML/YAML plans),
``trial`` (the result model: measurements, trials and the verdict rule), ``lab`` (the main
loop: baseline -> each recipe -> the adopted ones together) and ``report`` (strategy table,
decision record, JSON). What the machine is comes from ``latlab.environment``.
"""
