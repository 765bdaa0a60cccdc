"""recipes/cpu/build_compression_queries.py: requests phrased as evaluation phrases compression inputs,
tasks sampled evenly (a small task gives its room to the others), held-out pairs asked as questions."""
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

from embedtrain.evaluation.mteb_run import GENERATION_REQUESTS

SCRIPT = Path(__file__).resolve().parents[1] / "recipes" / "cpu" / "build_compression_queries.py"


def test_requests_cover_tasks_evenly_in_evaluation_phrasing(tmp_path):
    src = tmp_path / "trainset"
    src.mkdir()
    rows = [{"query": f"q{t}-{i}", "positive": f"p{t}-{i}", "task": t, "instruction": "Given x, retrieve y"}
            for t, n in (("big", 200), ("mid", 100), ("tiny", 5)) for i in range(n)]
    (src / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (src / "heldout.jsonl").write_text(json.dumps({"query": "hq", "positive": "hp", "task": "big",
                                                   "instruction": "Given x, retrieve y"}) + "\n")
    out = tmp_path / "out"
    subprocess.run([sys.executable, str(SCRIPT), str(src), str(out), "--num", "65"], check=True, capture_output=True)
    got = [json.loads(line) for line in open(out / "queries.jsonl")]
    assert Counter(r["task"] for r in got) == {"tiny": 5, "mid": 30, "big": 30}
    by_text = {r["query"]: r for r in rows} | {r["positive"]: r for r in rows}
    kinds = Counter()
    for r in got:
        request = next(v for v in GENERATION_REQUESTS.values() if r["query"].startswith(v))
        text = r["query"][len(request):]
        assert by_text[text]["task"] == r["task"]  # the text comes from a pair of the task it names
        side = "query" if text.startswith("q") else "positive"
        kinds[request, side] += 1
        assert request != GENERATION_REQUESTS["query"] or side == "query"
        assert request != GENERATION_REQUESTS["document"] or side == "positive"
    assert len({k[0] for k in kinds}) == 3 and len(set(r["query"] for r in got)) == 65
    held = [json.loads(line) for line in open(out / "heldout.jsonl")]
    assert held == [{"query": "hq", "positive": "hp", "task": "big", "instruction": GENERATION_REQUESTS["query"]}]
