"""Issue 6 tests 1 and 3 on real launchers: two "nodes" are two network namespaces joined by a veth pair
(its ends are named alike, so one GLOO_SOCKET_IFNAME serves both nodes, as on a real cluster).
1. launch/node.sh on each node (the deepspeed launcher's per-node mode, 1 process, gloo), and
   launch/hostfile.sh from one node over real sshd + pdsh, each give the losses of one node with 2 processes.
3. kill -9 of the rank on one node ends the other node's rank within a bound, naming the dead rank."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from embedtrain.distributed import child_env
from embedtrain.tiny import make_tiny_model

ROOT = Path(__file__).resolve().parents[1]
NS, ADDR = ("et_node0", "et_node1"), ("10.231.7.1", "10.231.7.2")
LINK = "etlink"  # the veth end's name inside each namespace


def _ip(*args):
    return subprocess.run(["ip", *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def nodes():
    if _ip("netns", "add", "et_probe").returncode != 0:
        pytest.skip("cannot create network namespaces here (needs root / CAP_NET_ADMIN and iproute2)")
    _ip("netns", "del", "et_probe")
    for ns in NS:
        _ip("netns", "del", ns)
    cmds = [("netns", "add", NS[0]), ("netns", "add", NS[1]),
            ("link", "add", "etv0", "type", "veth", "peer", "name", "etv1"),
            ("link", "set", "etv0", "netns", NS[0]), ("link", "set", "etv1", "netns", NS[1])]
    for i in (0, 1):
        cmds += [("-n", NS[i], "link", "set", f"etv{i}", "name", LINK),
                 ("-n", NS[i], "addr", "add", f"{ADDR[i]}/24", "dev", LINK),
                 ("-n", NS[i], "link", "set", LINK, "up"), ("-n", NS[i], "link", "set", "lo", "up")]
    for c in cmds:
        r = _ip(*c)
        assert r.returncode == 0, f"ip {' '.join(c)}: {r.stderr}"
    yield
    for ns in NS:
        # a failed run can leave ranks behind (started over ssh, they are no children of the test)
        for pid in _ip("netns", "pids", ns).stdout.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        _ip("netns", "del", ns)


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    root = tmp_path_factory.mktemp("multinode")
    model = make_tiny_model("chatml", root / "model")
    data = root / "d.jsonl"
    data.write_text("".join(open(ROOT / "recipes/quickstart/data/train.jsonl").readlines()[:400]))
    path = root / "r.yaml"
    path.write_text(f"""
run: {{log_every: 1, progress_bar: false}}
model: {{path: {model}, family: chatml, lora: {{enabled: true, dropout: 0.0}}}}
data: {{train: [{data}], max_length: 48, max_tokens_per_batch: 1024}}
train: {{batch_size: 8, steps: 6, lr: 1.0e-3}}
deepspeed: {{zero_stage: 2}}
""")
    return root, path


def _env(**extra):
    return child_env(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
                     **extra)


def _start_nodes(root, recipe, out, port, *sets, **extra):
    procs = []
    for i in (0, 1):
        env = _env(NNODES="2", NODE_RANK=str(i), MASTER_ADDR=ADDR[0], MASTER_PORT=str(port), NPROC="1",
                   GLOO_SOCKET_IFNAME=LINK, **extra)
        cmd = ["ip", "netns", "exec", NS[i], "bash", str(ROOT / "launch" / "node.sh"), str(recipe),
               "--set", f"run.output_dir={out}"] + [a for s in sets for a in ("--set", s)]
        procs.append(subprocess.Popen(cmd, env=env, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    return procs


def _losses(run):
    return [json.loads(line)["loss"] for line in open(run / "metrics.jsonl")]


@pytest.fixture(scope="module")
def one_node(recipe):
    """The reference: one node, 2 processes (torchrun), its losses."""
    root, path = recipe
    one = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "embedtrain", "train", str(path), "--set", f"run.output_dir={root / 'one'}"],
                         env=_env(), cwd=root, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-4000:]
    return _losses(root / "one")


def test_two_netns_nodes_equal_one_node_two_processes(nodes, recipe, one_node):
    root, path = recipe
    procs = _start_nodes(root, path, root / "two", 29611)
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (so, se) in zip(procs, outs):
        assert p.returncode == 0, so[-2000:] + se[-4000:]
    b = _losses(root / "two")
    assert len(one_node) == 6 and max(abs(x - y) for x, y in zip(one_node, b)) <= 1e-6
    assert (root / "two" / "final" / "adapter_model.safetensors").is_file()


@pytest.fixture(scope="module")
def sshd(nodes, tmp_path_factory):
    """An sshd in each namespace (root, key only) and a bin/ folder whose `ssh` uses this key: what
    passwordless ssh between cluster nodes gives deepspeed's runner and pdsh."""
    missing = [t for t in ("/usr/sbin/sshd", "ssh-keygen", "ssh", "pdsh") if not shutil.which(t)]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (apt-get install openssh-server pdsh; .ci/run installs them)")
    d = tmp_path_factory.mktemp("ssh")
    for key in ("id", "host"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / key)], check=True)
    shutil.copy(d / "id.pub", d / "authorized_keys")
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory
    daemons = []
    for i in (0, 1):
        (d / f"sshd{i}.conf").write_text(
            f"ListenAddress {ADDR[i]}\nHostKey {d}/host\nAuthorizedKeysFile {d}/authorized_keys\n"
            f"PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            f"UsePAM no\nStrictModes no\nPidFile {d}/sshd{i}.pid\n")
        daemons.append(subprocess.Popen(["ip", "netns", "exec", NS[i], "/usr/sbin/sshd", "-D", "-e",
                                         "-f", str(d / f"sshd{i}.conf")], stderr=open(d / f"sshd{i}.log", "w")))
    (d / "ssh_config").write_text(f"Host *\n  IdentityFile {d}/id\n  IdentitiesOnly yes\n  BatchMode yes\n"
                                  "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n")
    (d / "bin").mkdir()
    (d / "bin" / "ssh").write_text(f'#!/bin/sh\nexec {shutil.which("ssh")} -F {d}/ssh_config "$@"\n')
    (d / "bin" / "ssh").chmod(0o755)
    deadline = time.time() + 30
    for addr in ADDR:
        while subprocess.run(["ip", "netns", "exec", NS[0], str(d / "bin" / "ssh"), addr, "true"],
                             capture_output=True).returncode != 0:
            assert time.time() < deadline, f"sshd on {addr} did not come up: {(d / 'sshd0.log').read_text()}"
            time.sleep(0.3)
    yield d
    for p in daemons:
        p.terminate()
        p.wait(timeout=30)


def test_hostfile_over_ssh_equals_one_node(sshd, recipe, one_node):
    """launch/hostfile.sh from node 0: deepspeed's runner ssh-es to the first host for the master address,
    pdsh starts one rank per node over ssh. The launch environment must reach the remote shells
    (GLOO_SOCKET_IFNAME: without it gloo cannot pick the link), and a user's own ./.deepspeed_env must
    be kept and honoured (its EMBEDTRAIN_STATUS_FILE makes rank 0 write its end status)."""
    root, path = recipe
    work = root / "hostfile_cwd"
    work.mkdir()
    hosts = work / "hosts"
    hosts.write_text("".join(f"{a} slots=1\n" for a in ADDR))
    user_env = f"# the user's own file\nEMBEDTRAIN_STATUS_FILE={work / 'status'}\n"
    (work / ".deepspeed_env").write_text(user_env)
    env = _env(GLOO_SOCKET_IFNAME=LINK, MASTER_PORT="29631")
    env["PATH"] = f"{sshd / 'bin'}:{env['PATH']}"
    r = subprocess.run(["ip", "netns", "exec", NS[0], "bash", str(ROOT / "launch" / "hostfile.sh"), str(hosts),
                        str(path), "--set", f"run.output_dir={root / 'ssh'}"],
                       env=env, cwd=work, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-4000:]
    assert "Running on the following workers: 10.231.7.1,10.231.7.2" in r.stdout + r.stderr
    b = _losses(root / "ssh")
    assert len(b) == 6 and max(abs(x - y) for x, y in zip(one_node, b)) <= 1e-6
    assert (work / ".deepspeed_env").read_text() == user_env
    assert (work / "status").read_text().startswith("done after step 6"), (work / "status").read_text()


def _worker_pid(tag: str, rank: int, deadline: float) -> int:
    """The training process (not a launcher) of `rank`, found by the tag in its environment."""
    while time.time() < deadline:
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                env = (proc / "environ").read_bytes().split(b"\0")
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if f"ET_TEST_TAG={tag}".encode() in env and f"RANK={rank}".encode() in env and b"embedtrain" in cmdline \
                    and b"deepspeed" not in cmdline.split(b"\0")[0]:
                return int(proc.name)
        time.sleep(0.5)
    raise AssertionError(f"no worker process for rank {rank}")


def test_killed_rank_stops_the_other_node_in_bounded_time(nodes, recipe):
    root, path = recipe
    tag = uuid.uuid4().hex
    out = root / "killed"
    procs = _start_nodes(root, path, out, 29621, "train.steps=100000", ET_TEST_TAG=tag,
                         EMBEDTRAIN_HEARTBEAT_TIMEOUT="10")
    deadline = time.time() + 300
    while not (out / "metrics.jsonl").is_file() or len(_losses(out)) < 2:
        assert time.time() < deadline and all(p.poll() is None for p in procs), "the run did not start"
        time.sleep(0.5)
    os.kill(_worker_pid(tag, 1, deadline), signal.SIGKILL)
    t0 = time.time()
    _, err0 = procs[0].communicate(timeout=120)
    elapsed = time.time() - t0
    procs[1].communicate(timeout=60)
    assert procs[0].returncode != 0 and elapsed <= 60, f"node 0 took {elapsed:.0f} s"
    # gloo reports a dead peer at once but by address; the watchdog names the rank (or times out on it)
    assert "rank(s) 1 stopped sending heartbeats" in err0 or "rank 1 has sent no heartbeat" in err0, err0[-3000:]
