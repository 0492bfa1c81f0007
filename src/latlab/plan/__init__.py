"""Memory planning: weights, KV cache and the concurrency a device holds (no torch needed).

``plan_memory("Llama-3.1-8B", device="H100-80GB", context=8192)`` returns a MemoryPlan
(``explain_plan(plan)``: its formulas with the numbers filled in);
``kv.kv_bytes_per_token`` is the one function the engine and the planner share.
"""

from latlab.plan.catalog import device_names, get_device, model_names, resolve_model
from latlab.plan.explain import explain_plan
from latlab.plan.kv import kv_bytes_per_sequence, kv_bytes_per_token
from latlab.plan.memory_plan import MemoryPlan
from latlab.plan.planner import plan_memory
from latlab.plan.weights import count_parameters, weight_bytes

__all__ = [
    "MemoryPlan",
    "count_parameters",
    "device_names",
    "explain_plan",
    "get_device",
    "kv_bytes_per_sequence",
    "kv_bytes_per_token",
    "model_names",
    "plan_memory",
    "resolve_model",
    "weight_bytes",
]
