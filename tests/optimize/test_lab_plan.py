import pytest

from latlab.errors import ConfigError
from latlab.optimize.lab_plan import DEFAULT_RECIPES, default_plan, load_plan
from latlab.optimize.recipes import RECIPES


def _write(tmp_path, text, name="plan.toml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


GOOD = """\
repeats = 4
threads = 1
recipes = ["int8-weight-only", { name = "cpu-threads", threads = 2 }]

[workload]
num_requests = 6
output_len = 16

[quality]
top1_min = 0.95
windows = 4
"""


def test_good_toml_plan(tmp_path):
    plan = load_plan(_write(tmp_path, GOOD))
    assert plan.repeats == 4 and plan.threads == 1
    assert [r.name for r in plan.recipes] == ["int8-weight-only", "cpu-threads"]
    assert plan.recipes[1].options == {"threads": 2}
    assert plan.workload.num_requests == 6 and plan.workload.output_len == 16
    assert plan.thresholds.top1_min == 0.95 and plan.thresholds.mean_kl_max == 0.01
    assert plan.quality_windows == 4


def test_yaml_plan(tmp_path):
    pytest.importorskip("yaml")
    text = "repeats: 3\nrecipes:\n  - response-cache\n  - name: prompt-trim\n    budget: 16\n"
    plan = load_plan(_write(tmp_path, text, "plan.yaml"))
    assert [r.name for r in plan.recipes] == ["response-cache", "prompt-trim"]
    assert plan.recipes[1].build().name == "prompt-trim-16"


def test_typo_in_a_section_names_the_line(tmp_path):
    text = GOOD.replace("output_len = 16", "outptu_len = 16")
    with pytest.raises(ConfigError) as info:
        load_plan(_write(tmp_path, text))
    message = str(info.value)
    assert "line 7" in message and "workload.outptu_len" in message
    assert "did you mean 'output_len'" in message


def test_typo_at_top_level_names_the_line(tmp_path):
    with pytest.raises(ConfigError, match=r"line 1: unknown key 'repeets' \(did you mean"):
        load_plan(_write(tmp_path, GOOD.replace("repeats", "repeets")))


def test_unknown_recipe_names_the_line_and_lists_known(tmp_path):
    text = GOOD.replace('"int8-weight-only"', '"int8-weigth-only"')
    with pytest.raises(ConfigError) as info:
        load_plan(_write(tmp_path, text))
    message = str(info.value)
    assert "line 3" in message and "unknown recipe 'int8-weigth-only'" in message
    for name in RECIPES:
        assert name in message


def test_unknown_recipe_option(tmp_path):
    text = GOOD.replace("threads = 2 }", "thraeds = 2 }")
    with pytest.raises(ConfigError, match="line 3: recipe 'cpu-threads' has no option 'thraeds'"):
        load_plan(_write(tmp_path, text))


def test_wrong_type_names_the_line(tmp_path):
    with pytest.raises(ConfigError, match=r"line 6: workload\.num_requests must be int"):
        load_plan(_write(tmp_path, GOOD.replace("num_requests = 6", 'num_requests = "six"')))


def test_bad_values(tmp_path):
    with pytest.raises(ConfigError, match="repeats must be >= 3"):
        load_plan(_write(tmp_path, GOOD.replace("repeats = 4", "repeats = 2")))
    bad_workload = GOOD.replace("output_len = 16", "output_len = 16\nrepeat_fraction = 1.5")
    with pytest.raises(ConfigError, match="repeat_fraction must be in"):
        load_plan(_write(tmp_path, bad_workload))


def test_invalid_toml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"invalid TOML.*line 2"):
        load_plan(_write(tmp_path, "repeats = 3\nrecipes = [x]\n"))
    with pytest.raises(ConfigError, match="cannot read plan file"):
        load_plan(tmp_path / "missing.toml")


def test_default_plan_covers_every_level():
    plan = default_plan()
    levels = {spec.build().level for spec in plan.recipes}
    assert levels == {"model", "system", "engine", "request"}
    assert len(plan.recipes) == len(DEFAULT_RECIPES)
    assert plan.repeats >= 3


def test_budget_objective_and_price_in_a_plan(tmp_path):
    text = (
        'objective = "cost"\nprice_per_hour = 2.5\nrecipes = ["distill"]\n'
        '[quality]\nbudget = "ppl:+5%"\n'
    )
    plan = load_plan(_write(tmp_path, text))
    assert plan.objective == "cost" and plan.price.usd_per_hour == 2.5
    assert plan.thresholds.perplexity_increase_max_pct == 5.0 and plan.thresholds.top1_min is None
    from latlab.optimize.report import plan_toml

    again = load_plan(_write(tmp_path, plan_toml(plan), "again.toml"))
    assert again.thresholds == plan.thresholds and again.objective == "cost"
    with pytest.raises(ConfigError, match=r"line 5.*--quality-budget"):
        load_plan(_write(tmp_path, text.replace("ppl:+5%", "ppl:5x")))
    with pytest.raises(ConfigError, match="objective must be one of"):
        load_plan(_write(tmp_path, text.replace('"cost"', '"speed"')))
    with pytest.raises(ConfigError, match="no list price"):
        load_plan(_write(tmp_path, 'price_device = "RTX4090-24GB"\nrecipes = ["tf32"]\n'))


def test_engine_table_is_checked_by_the_engine_config_with_its_line(tmp_path):
    good = load_plan(_write(tmp_path, GOOD + '\n[engine]\nkv_cache_bytes = "64MiB"\n'))
    assert good.engine == {"kv_cache_bytes": "64MiB"}
    text = GOOD + "\n[engine]\nmax_num_seqs = 4\nmax_num_seq = 8\n"
    lines = len(GOOD.splitlines())
    with pytest.raises(ConfigError) as info:
        load_plan(_write(tmp_path, text))
    message = str(info.value)
    assert f"line {lines + 4}: [engine]: unknown engine option" in message
    assert "did you mean max_num_seqs?" in message
    bad_value = GOOD + "\n[engine]\nblock_size = 0\n"
    with pytest.raises(ConfigError, match=rf"line {lines + 3}: \[engine\]: block_size must be"):
        load_plan(_write(tmp_path, bad_value))
