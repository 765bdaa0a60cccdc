"""Issue 6 test 2 on a real Slurm: Debian's slurmctld + slurmd (munge auth) started on this machine with a
one-node, 2-CPU configuration. `sbatch launch/slurm/train.sbatch` trains the tiny recipe end to end; a job
that gets the preemption warning (USR1 to the batch shell, as --signal=B:USR1 sends it) checkpoints,
requeues itself and finishes with final weights equal to the uninterrupted job's."""
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from embedtrain.distributed import child_env
from embedtrain.tiny import make_tiny_model

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _why_not() -> str | None:
    missing = [b for b in ("slurmctld", "slurmd", "sbatch", "munged") if shutil.which(b) is None
               and not Path(f"/usr/sbin/{b}").exists()]
    if missing:
        return f"Slurm is not installed ({', '.join(missing)} missing: apt-get install slurm-wlm munge)"
    if os.geteuid() != 0:
        return "starting slurmctld/slurmd/munged needs root"
    return None


def _munge(tmp: Path) -> Path:
    """A private munged (own key and socket), so nothing on the machine is touched."""
    key, sock = tmp / "munge.key", tmp / "munge.socket"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    subprocess.run(["munged", "--force", f"--key-file={key}", f"--socket={sock}", f"--pid-file={tmp / 'munged.pid'}",
                    f"--log-file={tmp / 'munged.log'}", f"--seed-file={tmp / 'munged.seed'}"], check=True)
    return sock


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    why = _why_not()
    if why:
        pytest.skip(why)
    tmp = tmp_path_factory.mktemp("slurm")
    sock = _munge(tmp)
    host = socket.gethostname().split(".")[0]
    conf = tmp / "slurm.conf"
    conf.write_text(f"""
ClusterName=embedtrain
SlurmctldHost={host}
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
AuthInfo=socket={sock}
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={tmp / 'state'}
SlurmdSpoolDir={tmp / 'spool'}
SlurmctldPidFile={tmp / 'ctld.pid'}
SlurmdPidFile={tmp / 'slurmd.pid'}
SlurmctldLogFile={tmp / 'ctld.log'}
SlurmdLogFile={tmp / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
MpiDefault=none
ReturnToService=2
JobRequeue=1
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} State=UNKNOWN
PartitionName=test Nodes={host} Default=YES MaxTime=INFINITE State=UP
""")
    (tmp / "state").mkdir()
    (tmp / "spool").mkdir()
    env = dict(os.environ, SLURM_CONF=str(conf))
    daemons = [subprocess.Popen(["slurmctld", "-D", "-i", "-f", str(conf)], env=env, stderr=subprocess.DEVNULL),
               subprocess.Popen(["slurmd", "-D", "-f", str(conf)], env=env, stderr=subprocess.DEVNULL)]
    deadline = time.time() + 60
    while time.time() < deadline:
        out = subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True).stdout
        if out.strip() in ("idle", "mix", "alloc"):
            break
        time.sleep(1)
    else:
        logs = "".join((tmp / f).read_text()[-2000:] for f in ("ctld.log", "slurmd.log") if (tmp / f).exists())
        pytest.fail(f"slurm did not come up: {logs}")
    yield env, tmp
    for d in daemons:
        d.terminate()
    for d in daemons:
        d.wait(timeout=30)
    pid = (tmp / "munged.pid").read_text().strip() if (tmp / "munged.pid").exists() else None
    if pid:
        subprocess.run(["kill", pid])


def _job_state(env, job: str) -> dict:
    out = subprocess.run(["scontrol", "show", "job", job], env=env, capture_output=True, text=True).stdout
    return dict(re.findall(r"(\w+)=(\S+)", out))


def _job_env(env, nproc: int) -> dict:
    """What sbatch exports to the job: no rank variables left over from this test process."""
    return child_env(env, PATH=f"{Path(sys.executable).parent}:{env['PATH']}", PYTHONPATH=str(ROOT),
                     NPROC=str(nproc), OMP_NUM_THREADS="1", EMBEDTRAIN_LAUNCH_DIR=str(ROOT / "launch"))


def _submit(env, tmp, recipe, out_dir, *sets) -> str:
    job_env = _job_env(env, 2)
    cmd = ["sbatch", "--parsable", "--time=20", str(ROOT / "launch/slurm/train.sbatch"), str(recipe),
           "--set", f"run.output_dir={out_dir}"] + [a for s in sets for a in ("--set", s)]
    proc = subprocess.run(cmd, env=job_env, cwd=tmp, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().split(";")[0]


def _wait_done(env, job, timeout=600) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = _job_state(env, job)
        if state.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL") \
                or state.get("Reason") == "DependencyNeverSatisfied":
            return state
        time.sleep(2)
    raise AssertionError(f"job {job} still {_job_state(env, job).get('JobState')} after {timeout} s")


def test_sbatch_trains_and_a_preempted_job_requeues_to_the_same_weights(slurm, tmp_path):
    env, _ = slurm
    model = make_tiny_model("chatml", tmp_path / "model")
    data = tmp_path / "d.jsonl"
    data.write_text("".join(open(ROOT / "recipes/quickstart/data/train.jsonl").readlines()[:400]))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""
run: {{log_every: 1, progress_bar: false, checkpoint_every: 0}}
model: {{path: {model}, family: chatml, lora: {{enabled: true, dropout: 0.1}}}}
data: {{train: [{data}], max_length: 48, max_tokens_per_batch: 1024}}
train: {{batch_size: 8, steps: 300, lr: 1.0e-3}}
""")
    straight = _submit(env, tmp_path, recipe, tmp_path / "straight")
    state = _wait_done(env, straight)
    log = (tmp_path / f"slurm-embedtrain-{straight}.out").read_text()
    assert state["JobState"] == "COMPLETED", log[-3000:]

    job = _submit(env, tmp_path, recipe, tmp_path / "split")
    metrics = tmp_path / "split" / "metrics.jsonl"
    deadline = time.time() + 300
    while not metrics.is_file() or len(metrics.read_text().splitlines()) < 3:
        assert time.time() < deadline, "the job did not start training"
        time.sleep(0.2)
    subprocess.run(["scancel", "--batch", "--signal=USR1", job], env=env, check=True)
    state = _wait_done(env, job, timeout=900)
    log = (tmp_path / f"slurm-embedtrain-{job}.out").read_text()
    assert state["JobState"] == "COMPLETED" and int(state.get("Restarts", 0)) >= 1, log[-4000:]
    assert "requeueing job" in log and "resumed from" in log
    a = load_file(str(tmp_path / "straight" / "final" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "split" / "final" / "adapter_model.safetensors"))
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_chain_runs_the_second_recipe_after_the_first(slurm, tmp_path):
    """launch/slurm/chain.sh: stage II is submitted with afterok on stage I and starts from its weights."""
    env, _ = slurm
    model = make_tiny_model("chatml", tmp_path / "model")
    data = tmp_path / "d.jsonl"
    data.write_text("".join(open(ROOT / "recipes/quickstart/data/train.jsonl").readlines()[:100]))
    common = f"""
run: {{progress_bar: false}}
model: {{path: {model}, family: chatml}}
data: {{train: [{data}], max_length: 48, max_tokens_per_batch: 1024}}
"""
    (tmp_path / "common.yaml").write_text(common)
    (tmp_path / "s1.yaml").write_text(f"base: common.yaml\nrun: {{output_dir: {tmp_path / 's1'}}}\n"
                                      "train: {objective: reconstruction, batch_size: 8, steps: 2}\n")
    (tmp_path / "s2.yaml").write_text(f"base: common.yaml\nrun: {{output_dir: {tmp_path / 's2'}}}\n"
                                      f"model: {{init_from: {tmp_path / 's1'}, lora: {{enabled: true}}}}\n"
                                      "train: {batch_size: 8, steps: 2}\n")
    job_env = _job_env(env, 1)
    proc = subprocess.run(["bash", str(ROOT / "launch/slurm/chain.sh"), "--time=20", "--",
                           str(tmp_path / "s1.yaml"), str(tmp_path / "s2.yaml")], env=job_env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    jobs = re.findall(r"as job (\d+)", proc.stdout)
    assert len(jobs) == 2 and f"after {jobs[0]}" in proc.stdout
    first, second = (_wait_done(env, j) for j in jobs)
    assert first["JobState"] == second["JobState"] == "COMPLETED"
    assert second["StartTime"] >= first["EndTime"]  # ISO timestamps compare as strings
    assert (tmp_path / "s2" / "final" / "adapter_model.safetensors").is_file()
