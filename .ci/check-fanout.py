#!/usr/bin/env python3
"""Checks the two shipped sweep fan-outs parse and agree with themselves.

.github/workflows/sweep-matrix.yml: the shard job is a matrix over
`shard: [1..N]`, each running `--shard <its entry>/<job-total>` with
`--outcomes`, and the merge job needs it and runs `tiersim sweep merge`.
deploy/k8s/*.yaml: an Indexed Job whose completions equal SHARDS, whose
pods take their shard from JOB_COMPLETION_INDEX, and a merge Job over the
same volume. Exits non-zero naming the first mismatch.

With `--run BIN` it also plays both fan-outs on this machine with the
tiersim binary BIN and a small seed range: every shard's command as shipped
(the matrix entry, or JOB_COMPLETION_INDEX, filled in), then the merge's,
which must exit 0 with every seed passed.
"""
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent


def fail(why):
    sys.exit(f"check-fanout: {why}")


def load_all(rel):
    path = ROOT / rel
    try:
        return list(yaml.safe_load_all(path.read_text()))
    except (OSError, yaml.YAMLError) as e:
        fail(f"{rel}: {e}")


def workflow():
    rel = ".github/workflows/sweep-matrix.yml"
    [wf] = load_all(rel)
    jobs = wf["jobs"]
    shard, merge = jobs["shard"], jobs["merge"]
    entries = shard["strategy"]["matrix"]["shard"]
    if entries != list(range(1, len(entries) + 1)):
        fail(f"{rel}: matrix shard must be 1..N, is {entries}")
    runs = " ".join(s.get("run", "") for s in shard["steps"])
    for needle in (
        "--shard ${{ matrix.shard }}/${{ strategy.job-total }}",
        "--outcomes outcomes/shard-${{ matrix.shard }}.jsonl",
    ):
        if needle not in runs:
            fail(f"{rel}: the shard job does not run `{needle}`")
    if merge.get("needs") != "shard":
        fail(f"{rel}: the merge job must need the shard job")
    if "tiersim sweep merge outcomes/*.jsonl" not in " ".join(
        s.get("run", "") for s in merge["steps"]
    ):
        fail(f"{rel}: the merge job does not run `tiersim sweep merge`")
    return len(entries)


def container(job):
    [c] = job["spec"]["template"]["spec"]["containers"]
    return c


def claim(job):
    [v] = job["spec"]["template"]["spec"]["volumes"]
    return v["persistentVolumeClaim"]["claimName"]


def kubernetes():
    rel = "deploy/k8s/sweep-shards.yaml"
    docs = load_all(rel)
    kinds = {d["kind"]: d for d in docs}
    pvc, job = kinds["PersistentVolumeClaim"], kinds["Job"]
    spec = job["spec"]
    if spec.get("completionMode") != "Indexed":
        fail(f"{rel}: the Job must be completionMode: Indexed")
    c = container(job)
    env = {e["name"]: e["value"] for e in c["env"]}
    if int(env["SHARDS"]) != spec["completions"]:
        fail(f"{rel}: SHARDS={env['SHARDS']} but completions={spec['completions']}")
    script = " ".join(c["args"])
    for needle in ('--shard "$((JOB_COMPLETION_INDEX + 1))/$SHARDS"', "--outcomes"):
        if needle not in script:
            fail(f"{rel}: the shard pod does not run `{needle}`")
    if claim(job) != pvc["metadata"]["name"]:
        fail(f"{rel}: the Job does not mount the claim it declares")
    rel_merge = "deploy/k8s/sweep-merge.yaml"
    [merge] = load_all(rel_merge)
    if claim(merge) != claim(job):
        fail(f"{rel_merge}: mounts {claim(merge)}, the shards write to {claim(job)}")
    if "tiersim sweep merge /outcomes/shard-*.jsonl" not in " ".join(container(merge)["args"]):
        fail(f"{rel_merge}: does not run `tiersim sweep merge` over the shards' files")
    return spec["completions"]


SMALL_SEEDS = "0..8"


def play(name, shards, merge, work):
    """Runs the shard commands, then the merge; the merge must pass."""
    for cmd, env in shards:
        done = subprocess.run(["sh", "-c", cmd], cwd=ROOT, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            fail(f"{name}: a shard exited {done.returncode}: {cmd}\n{done.stdout}{done.stderr}")
    cmd, env = merge
    done = subprocess.run(["sh", "-c", cmd], cwd=ROOT, env=env, capture_output=True, text=True)
    last = done.stdout.strip().splitlines()[-1:] or [""]
    want = f"{len(range(*map(int, SMALL_SEEDS.split('..'))))} passed, 0 failed"
    if done.returncode != 0 or last[0] != want:
        fail(f"{name}: the merge exited {done.returncode} ending {last[0]!r}:\n{done.stderr}")
    print(f"{name}: {len(shards)} shards merged: {want}")


def run_workflow(binary, work):
    [wf] = load_all(".github/workflows/sweep-matrix.yml")
    env = dict(os.environ)
    for key, value in wf["env"].items():
        # `${{ inputs.x || 'default' }}`: the default.
        m = re.fullmatch(r"\$\{\{ inputs\.\w+ \|\| '([^']*)' \}\}", str(value))
        env[key] = m.group(1) if m else str(value)
    env["SEEDS"] = SMALL_SEEDS
    bin_dir = work / "target" / "release"
    bin_dir.mkdir(parents=True)
    shutil.copy(binary, bin_dir / "tiersim")
    entries = wf["jobs"]["shard"]["strategy"]["matrix"]["shard"]

    def script(job, filled):
        text = " && ".join(s["run"].strip() for s in wf["jobs"][job]["steps"]
                           if "run" in s and "tiersim" in s["run"])
        for k, v in filled.items():
            text = text.replace("${{ %s }}" % k, str(v))
        return text.replace("target/", f"{work}/target/").replace("outcomes/", f"{work}/outcomes/")

    shards = [(script("shard", {"matrix.shard": e, "strategy.job-total": len(entries)}), env)
              for e in entries]
    play("CI matrix", shards, (script("merge", {}), env), work)


def run_kubernetes(binary, work):
    docs = {d["kind"]: d for d in load_all("deploy/k8s/sweep-shards.yaml")}
    job = docs["Job"]
    c = container(job)
    path = f"{pathlib.Path(binary).resolve().parent}:{os.environ['PATH']}"
    base = dict(os.environ, PATH=path, **{e["name"]: e["value"] for e in c["env"]})
    base["SEEDS"] = SMALL_SEEDS
    volume = str(work / "outcomes")
    os.makedirs(volume)
    shards = [(" ".join(c["args"]).replace("/outcomes", volume),
               dict(base, JOB_COMPLETION_INDEX=str(i)))
              for i in range(job["spec"]["completions"])]
    [merge] = load_all("deploy/k8s/sweep-merge.yaml")
    merge_cmd = " ".join(container(merge)["args"]).replace("/outcomes", volume)
    play("Kubernetes Indexed Job", shards, (merge_cmd, base), work)


if __name__ == "__main__":
    n_ci = workflow()
    n_k8s = kubernetes()
    print(f"fan-outs: CI matrix of {n_ci} shards, Kubernetes Indexed Job of {n_k8s}: ok")
    if len(sys.argv) == 3 and sys.argv[1] == "--run":
        for run in (run_workflow, run_kubernetes):
            with tempfile.TemporaryDirectory() as work:
                run(sys.argv[2], pathlib.Path(work))
    elif len(sys.argv) != 1:
        fail("usage: check-fanout.py [--run TIERSIM_BINARY]")
