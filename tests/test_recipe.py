"""Test 7 (recipes): inheritance, overrides, and the promised error messages."""
import json
import textwrap

import pytest

from embedtrain.config.loader import RecipeError, load_recipe
from embedtrain.engine.ds_config import batch_plan, build_ds_config


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
        objective: {infonce: {temperature: 0.05}}
    """)
    cfg, origin = load_recipe(child, ["train.lr=3e-4", "model.lora.enabled=true", "data.instructions.nq=Find it"])
    assert cfg.model.pooling == "mean" and cfg.data.max_length == 256  # from base
    assert cfg.train.batch_size == 32  # child wins
    assert cfg.train.lr == 3e-4 and cfg.model.lora.enabled is True  # --set wins, typed
    assert cfg.data.instructions == {"nq": "Find it"}
    assert origin["train.batch_size"].endswith("child.yaml") and origin["model.path"].endswith("base.yaml")
    assert origin["train.lr"] == "--set"


def test_duplicate_key_is_an_error_not_a_silent_override(base):
    child = write(base / "child.yaml", "base: base.yaml\nmodel: {family: chatml}\ntrain: {steps: 5}\nmodel: {dtype: float32}\n")
    with pytest.raises(RecipeError, match=r"(?s)child.yaml: not valid YAML.*key 'model' appears twice \(first on line 2\)"):
        load_recipe(child)


def test_unknown_key_names_file_key_and_suggestion(base):
    child = write(base / "child.yaml", "base: base.yaml\ntrain: {learning_rate: 1e-4}\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(child)
    msg = str(err.value)
    assert "child.yaml" in msg and "`train.learning_rate`" in msg and "did you mean `train.lr`" in msg


@pytest.mark.parametrize("typo, suggestion", [("lerning_rate", "lr"), ("max_step", "steps"), ("warmup_step", "warmup_steps"),
                                              ("gradient_accumulation_steps", "grad_accum")])
def test_suggestions_know_familiar_names(base, typo, suggestion):
    with pytest.raises(RecipeError, match=f"did you mean `train.{suggestion}`"):
        load_recipe(base / "base.yaml", [f"train.{typo}=1"])


def test_unknown_key_in_base_names_the_base_file(base):
    write(base / "base.yaml", "model: {path: m, poolng: mean}\ndata: {train: [a]}\n")
    child = write(base / "child.yaml", "base: base.yaml\n")
    with pytest.raises(RecipeError, match=r"base\.yaml: unknown key `model\.poolng`; did you mean `model\.pooling`"):
        load_recipe(child)


@pytest.mark.parametrize("text, message", [
    ("trian: {lr: 1}", "unknown key `trian`; did you mean `train`"),
    ("objective: {infonce: {temprature: 0.1}}",
     "`objective.infonce.temprature`; did you mean `objective.infonce.temperature`"),
    # Options of another objective are checked too (a base may carry both stages' options).
    ("objective: {reconstruction: {alfa: 0.1}}",
     "`objective.reconstruction.alfa`; did you mean `objective.reconstruction.alpha`"),
    ("objective: {infonse: {temperature: 0.1}}", "objective.infonse: unknown objective 'infonse'; did you mean 'infonce'"),
])
def test_unknown_section_and_objective_option(base, text, message):
    child = write(base / "c.yaml", f"base: base.yaml\n{text}\n")
    with pytest.raises(RecipeError, match=message):
        load_recipe(child)


def test_unknown_objective_name(base):
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
    ("objective.infonce.temperature=0", r"objective\.infonce\.temperature: must be > 0"),
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
    recipes = sorted(r for r in (root / "recipes").rglob("*.yaml") if not r.name.startswith("_"))
    assert len(recipes) >= 25, "recipes missing"
    for r in recipes:
        cfg, _ = load_recipe(r)
        for stage in (0, 1, 2, 3):
            cfg.deepspeed.zero_stage = stage
            assert build_ds_config(cfg, 1)["zero_optimization"]["stage"] == stage


PAPER = {  # METHODS.md sections 1-2: stage I global batch, stage II global contrastive batch
    "llama-3.2-1b": (512, 1024), "llama-3.2-3b": (1024, 512), "llama-3.1-8b": (512, 256), "qwen2.5-1.5b": (1024, 1024)}


@pytest.mark.parametrize("name", ["llama-3.2-1b", "llama-3.2-3b", "llama-3.1-8b", "qwen2.5-1.5b", "qwen3-0.6b",
                                  "qwen3-4b", "qwen3-8b", "mistral-7b"])
def test_anchor_recipes_carry_the_published_settings(name):
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "recipes" / "anchor" / name
    s1, _ = load_recipe(root / "stage1.yaml")
    s2, _ = load_recipe(root / "stage2.yaml")
    base, _ = load_recipe(root / "baseline.yaml")
    assert s1.train.objective == "reconstruction" and s1.objective["reconstruction"]["alpha"] == 0.2 and not s1.model.lora.enabled
    assert (s1.train.lr, s1.train.warmup_steps, s1.train.steps, s1.train.schedule) == (4e-5, 300, 2000, "linear")
    for c in (s1, s2, base):
        assert (c.data.max_length, c.model.dtype, c.model.gradient_checkpointing, c.run.seed) == (512, "bfloat16", True, 42)
        assert c.model.pooling == "last" and len(c.data.train) == 14 and len(c.data.instructions) == 14
    for c in (s2, base):
        lora = c.model.lora
        assert (lora.enabled, lora.r, lora.alpha, lora.dropout, lora.target_modules) == (True, 16, 32, 0.05, None)
        assert (c.train.objective, c.train.lr, c.train.warmup_steps, c.objective["infonce"]["temperature"]) == ("infonce", 2e-4, 300, 0.02)
        assert c.train.batch_size == s2.train.batch_size and c.model.path == s1.model.path
    assert s2.model.init_from == s1.run.output_dir and base.model.init_from is None
    if name in PAPER:
        assert (s1.train.batch_size, s2.train.batch_size) == PAPER[name]
    for gpus in (1, 2, 4, 8):  # the global batch holds at any of these GPU counts
        micro, gas = batch_plan(s1, gpus)
        assert micro * gas == s1.train.batch_size
        assert batch_plan(s2, gpus) == (s2.train.batch_size, 1)
    big = "8b" in name or "7b" in name
    assert s1.deepspeed.zero_stage == (3 if big else 2)  # full fine-tuning state fits 8 x 80 GB


COMPRESSION = {  # METHODS.md section 3: lr by family; the 11 published models
    "qwen3-0.6b": 3e-4, "qwen3-1.7b": 3e-4, "qwen3-4b": 3e-4, "qwen3-8b": 3e-4, "qwen2.5-0.5b": 5e-4,
    "qwen2.5-1.5b": 5e-4, "qwen2.5-3b": 5e-4, "qwen2.5-7b": 5e-4, "llama-3.2-1b": 5e-4, "llama-3.2-3b": 5e-4,
    "llama-3.1-8b": 5e-4}


@pytest.mark.parametrize("name", sorted(COMPRESSION))
def test_compression_recipes_carry_the_published_settings(name):
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "recipes" / "compression"
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == sorted(COMPRESSION)
    c, origin = load_recipe(root / name / "recipe.yaml")
    o = c.objective["compression"]
    assert c.train.objective == "compression" and c.train.lr == COMPRESSION[name]
    assert (c.train.warmup_steps, c.train.steps, c.train.batch_size) == (100, 5000, 32)
    assert (o["thought_tokens"], o["compression_tokens"], o["w_recon"], o["w_align"]) == (10, 10, 1.0, 1.0)
    assert (c.data.max_length, o["response_max_length"], c.teacher.max_length) == (512, 512, 512)
    assert (c.model.dtype, c.model.gradient_checkpointing, c.model.lora.enabled) == ("bfloat16", True, False)
    assert (c.generate.max_new_tokens, c.generate.max_prompt_length) == (500, 1024)
    assert c.data.train == [c.generate.output_dir]  # training reads what generate writes
    for gpus in (1, 2, 4, 8):
        micro, gas = batch_plan(c, gpus)
        assert micro * gas == 32


@pytest.mark.parametrize("value, expected", [(20, "scale 20 is `objective.infonce.temperature: 0.05`"),
                                             (50, "scale 50 is `objective.infonce.temperature: 0.02`"),
                                             ("big", "scale 20 is `objective.infonce.temperature: 0.05`")])
def test_scale_is_explained_as_the_inverse_temperature(base, value, expected):
    """sentence-transformers' `scale` multiplies the similarities (1 / temperature): the error says so
    and gives the equivalent temperature, never `temperature: <scale>`."""
    with pytest.raises(RecipeError) as err:
        load_recipe(base / "base.yaml", [f"objective.infonce.scale={value}"])
    message = str(err.value)
    assert "unknown key `objective.infonce.scale`" in message and "1 / temperature" in message
    assert expected in message and f"temperature: {value}`" not in message


def test_objective_options_are_typed_once_at_load(base):
    """cfg.objective holds each block as its options dataclass; the chosen one exists with its defaults
    even without a block, and the resolved config serialises them as plain mappings."""
    import dataclasses

    from embedtrain.config.objective_options import InfoNCEOptions, ReconstructionOptions

    cfg, _ = load_recipe(base / "base.yaml", ["objective.infonce.temperature=0.05", "objective.reconstruction.alpha=0.5"])
    assert isinstance(cfg.options(), InfoNCEOptions) and cfg.options().temperature == 0.05
    assert isinstance(cfg.objective["reconstruction"], ReconstructionOptions) and cfg.objective["reconstruction"]["alpha"] == 0.5
    assert dataclasses.asdict(cfg)["objective"]["infonce"] == {"temperature": 0.05, "symmetric": False, "grad_cache": False,
                                                          "matryoshka_dims": None, "matryoshka_weights": None,
                                                              "gather_across_ranks": True}
    bare, _ = load_recipe(base / "base.yaml", ["train.objective=reconstruction", "model.pooling=last"])
    assert bare.options() == ReconstructionOptions()
