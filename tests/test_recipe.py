"""Test 7 (recipes): inheritance, overrides, and the promised error messages."""
import json
import textwrap

import pytest

from embedtrain.config.loader import RecipeError, load_recipe
from embedtrain.engine.ds_config import build_ds_config


def write(path, text):
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def base(tmp_path):
    write(tmp_path / "base.yaml", """
        model: {path: /models/m, pooling: mean}
        data: {train: [a.jsonl], max_length: 256}
        train: {lr: 1e-4, batch_size: 16}
    """)
    return tmp_path


def test_base_inheritance_and_overrides(base):
    child = write(base / "child.yaml", """
        base: base.yaml
        train: {batch_size: 32}
        objective: {temperature: 0.05}
    """)
    cfg, origin = load_recipe(child, ["train.lr=3e-4", "model.lora.enabled=true", "data.instructions.nq=Find it"])
    assert cfg.model.pooling == "mean" and cfg.data.max_length == 256  # from base
    assert cfg.train.batch_size == 32  # child wins
    assert cfg.train.lr == 3e-4 and cfg.model.lora.enabled is True  # --set wins, typed
    assert cfg.data.instructions == {"nq": "Find it"}
    assert origin["train.batch_size"].endswith("child.yaml") and origin["model.path"].endswith("base.yaml")
    assert origin["train.lr"] == "--set"


def test_unknown_key_names_file_key_and_suggestion(base):
    child = write(base / "child.yaml", "base: base.yaml\ntrain: {learning_rate: 1e-4}\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(child)
    msg = str(err.value)
    assert "child.yaml" in msg and "`train.learning_rate`" in msg and "did you mean `train.lr`" in msg


def test_unknown_key_in_base_names_the_base_file(base):
    write(base / "base.yaml", "model: {path: m, poolng: mean}\ndata: {train: [a]}\n")
    child = write(base / "child.yaml", "base: base.yaml\n")
    with pytest.raises(RecipeError, match=r"base\.yaml: unknown key `model\.poolng`; did you mean `model\.pooling`"):
        load_recipe(child)


def test_unknown_section_and_objective_option(base):
    child = write(base / "c.yaml", "base: base.yaml\ntrian: {lr: 1}\n")
    with pytest.raises(RecipeError, match="unknown key `trian`; did you mean `train`"):
        load_recipe(child)
    child = write(base / "c.yaml", "base: base.yaml\nobjective: {temprature: 0.1}\n")
    with pytest.raises(RecipeError, match="`objective.temprature`; did you mean `objective.temperature`"):
        load_recipe(child)
    with pytest.raises(RecipeError, match="unknown objective 'infonse'; did you mean 'infonce'"):
        load_recipe(base / "base.yaml", ["train.objective=infonse"])


@pytest.mark.parametrize("override, message", [
    ("train.batch_size=abc", r"train\.batch_size must be int, got str"),
    ("train.steps=true", r"train\.steps must be int, got bool"),
    ("model.pooling=max", r"model\.pooling = 'max' is not one of 'last', 'mean'"),
    ("data.train=a.jsonl", r"data\.train must be a list"),
    ("deepspeed.zero_stage=4", r"deepspeed\.zero_stage: must be 0, 1, 2 or 3"),
    ("deepspeed.offload=true", r"deepspeed\.offload: CPU offload is set up for ZeRO-3 only"),
    ("data.max_tokens_per_batch=100", r"must be >= data\.max_length \(256\)"),
    ("train.warmup_steps=1000", r"train\.warmup_steps: \(1000\) exceeds train\.steps"),
    ("objective.temperature=0", r"objective\.temperature: must be > 0"),
    ("model.attn_backend=flash_attn", r"flash_attn needs model\.dtype bfloat16"),
    ("train.micro_batch_per_rank=2", r"splitting a batch changes the infonce loss"),
    ("model.family=qwen", r"unknown family 'qwen'; did you mean 'qwen[23]'"),
])
def test_wrong_types_and_impossible_combinations(base, override, message):
    with pytest.raises(RecipeError, match=message) as err:
        load_recipe(base / "base.yaml", [override])
    assert "--set" in str(err.value) or "base.yaml" in str(err.value)


def test_ds_config_filled_from_recipe_and_never_twice(base, tmp_path):
    cfg, _ = load_recipe(base / "base.yaml", ["deepspeed.zero_stage=2", "train.grad_accum=3", "train.grad_clip=0.5"])
    ds = build_ds_config(cfg, world_size=2)
    assert ds["zero_optimization"]["stage"] == 2
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], ds["train_batch_size"]) == (8, 3, 48)
    assert ds["gradient_clipping"] == 0.5 and ds["bf16"] == {"enabled": False}
    with pytest.raises(ValueError, match="not divisible by the world size 3"):
        build_ds_config(cfg, world_size=3)
    cfg, _ = load_recipe(base / "base.yaml", ["train.objective=reconstruction", "train.micro_batch_per_rank=2",
                                             "model.pooling=last"])
    ds = build_ds_config(cfg, world_size=4)  # batch 16 = 2 per rank x 4 ranks x 2 accumulation
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], ds["train_batch_size"]) == (2, 2, 16)
    with pytest.raises(ValueError, match="not a multiple of train.micro_batch_per_rank x world size = 2 x 3"):
        build_ds_config(cfg, world_size=3)
    own = tmp_path / "mine.json"
    own.write_text(json.dumps({"zero_optimization": {"stage": 1}, "gradient_clipping": 1.0}))
    cfg, _ = load_recipe(base / "base.yaml", [f"deepspeed.config={own}"])
    with pytest.raises(ValueError, match="mine.json: `gradient_clipping` is filled from the recipe"):
        build_ds_config(cfg, world_size=1)
    own.write_text(json.dumps({"zero_optimization": {"stage": 1, "overlap_comm": True}}))
    with pytest.raises(ValueError, match="mine.json: zero_optimization.overlap_comm needs ZeRO stage 2 or 3"):
        build_ds_config(cfg, world_size=1)


def test_every_shipped_recipe_and_ds_config_loads():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    recipes = sorted((root / "recipes").rglob("*.yaml"))
    assert recipes, "no recipes shipped"
    for r in recipes:
        cfg, _ = load_recipe(r)
        for stage in (0, 1, 2, 3):
            cfg.deepspeed.zero_stage = stage
            assert build_ds_config(cfg, 1)["zero_optimization"]["stage"] == stage
