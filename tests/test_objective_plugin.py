"""An objective defined outside embedtrain (options + class, registered) trains through the unchanged engine:
its typed options come from the recipe, its first logged loss equals the same loss computed directly on the
first batch, and the run saves weights through the default hooks."""
import json
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from embedtrain.config.loader import RecipeError, load_recipe
from embedtrain.config.schema import ModelConfig
from embedtrain.data.batches import BatchOrder, MicroBatchBuilder
from embedtrain.data.jsonl import build_index
from embedtrain.data.packing import TextTokenizer
from embedtrain.model.embedder import build_model, load_tokenizer
from embedtrain.objectives.base import embed_batch
from plugin_helpers import plugin_setup
from test_distributed import _env

PLUGIN = '''
import sys
from dataclasses import dataclass

import torch.nn.functional as F

from embedtrain.config.objective_options import ObjectiveOptions, options_for
from embedtrain.objectives import register
from embedtrain.objectives.base import NO_STEP, Objective, embed_batch


@options_for("toy_pull")
@dataclass
class ToyPullOptions(ObjectiveOptions):
    weight: float = 1.0

    def validate(self, cfg):
        return ("objective.toy_pull.weight", "must be > 0") if self.weight <= 0 else None


@register("toy_pull")
class ToyPull(Objective):
    """weight * (1 - cos(query, positive)), mean over the micro-batch's queries; negatives unused."""
    uses_negatives = False

    def loss(self, model, batch, step=NO_STEP):
        emb = embed_batch(model, batch, self.device)
        q = batch.num_queries
        loss = self.options.weight * (1 - F.cosine_similarity(emb[:q], emb[q:2 * q])).mean()
        return loss, {"loss": loss.item()}

'''


@pytest.fixture(scope="module")
def plugin_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("plugin")
    model = plugin_setup(root, "toy_plugin", PLUGIN, 32)
    (root / "r.yaml").write_text(textwrap.dedent(f"""
        run: {{output_dir: {root / 'run'}, progress_bar: false, log_every: 1, seed: 3}}
        model: {{path: {model}, family: chatml, pooling: mean}}
        data: {{train: [{root / 'train.jsonl'}], max_length: 48, max_tokens_per_batch: 1024}}
        train: {{objective: toy_pull, batch_size: 8, steps: 3, lr: 1.0e-2, warmup_steps: 0}}
        objective: {{toy_pull: {{weight: 2.0}}}}
    """))
    proc = subprocess.run([sys.executable, str(root / "toy_plugin.py"), "train", str(root / "r.yaml")],
                          env=_env(), capture_output=True, text=True, timeout=600, cwd=root)
    assert proc.returncode == 0, proc.stderr[-4000:]
    sys.path.insert(0, str(root))
    try:
        __import__("toy_plugin")  # registers the plugin here too, so its recipe loads in this process
    finally:
        sys.path.remove(str(root))
    return root


def test_plugin_objective_trains_through_the_engine(plugin_run):
    root = plugin_run
    rows = [json.loads(line) for line in open(root / "run" / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2, 3]
    resolved = (root / "run" / "config.yaml").read_text()
    assert "toy_pull:\n    weight: 2.0" in resolved
    assert (root / "run" / "final" / "model.safetensors").is_file()  # the default saved_module / write_weights

    # The first step's loss, computed here from the untrained weights on the engine's first batch.
    cfg, _ = load_recipe(root / "r.yaml")
    assert cfg.options()["weight"] == 2.0
    torch.manual_seed(cfg.run.seed)
    tok = load_tokenizer(cfg.model.path)
    model = build_model(ModelConfig(path=cfg.model.path, family="chatml", pooling="mean"), tok, torch.device("cpu"))
    index = build_index(cfg.data.train)
    ids = BatchOrder(index, cfg.train.batch_size, cfg.run.seed, True).global_batch_ids(0)
    builder = MicroBatchBuilder(index, TextTokenizer(tok, model.family, cfg.data.max_length, cfg.data.instruction_format),
                                cfg.data.max_tokens_per_batch, 1, {}, None, 0)
    batch = builder.build(list(ids))
    with torch.no_grad():
        emb = embed_batch(model, batch, torch.device("cpu"))
    q = batch.num_queries
    expected = 2.0 * (1 - F.cosine_similarity(emb[:q], emb[q:2 * q])).mean().item()
    assert abs(rows[0]["loss"] - expected) < 1e-5, (rows[0]["loss"], expected)


def test_plugin_options_are_checked_at_load(plugin_run):
    root = plugin_run
    with pytest.raises(RecipeError, match=r"unknown key `objective\.toy_pull\.wieght`; did you mean `objective\.toy_pull\.weight`"):
        load_recipe(root / "r.yaml", ["objective.toy_pull.wieght=1"])
    with pytest.raises(RecipeError, match=r"objective\.toy_pull\.weight: must be > 0"):
        load_recipe(root / "r.yaml", ["objective.toy_pull.weight=0"])
