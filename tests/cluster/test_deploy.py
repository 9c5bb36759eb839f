"""Cluster specifications: parsing, config files, job scripts, pod specs and cluster creation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import dask
import pytest

from tiledseg.cluster._client import (
    ClusterInfo,
    WorkerInfo,
    check_tile_memory,
    cluster_info,
    open_client,
    predict_tile_memory,
)
from tiledseg.cluster._deploy import (
    CLUSTER_KINDS,
    PROFILE_ENV,
    WORKER_MALLOC,
    ClusterSpec,
    example_config,
    format_memory,
    job_script,
    kubernetes_cluster_spec,
    load_cluster_config,
    make_cluster,
    parse_memory,
    resolve_cluster,
    worker_environment,
)
from tiledseg.errors import ClusterConfigError, MissingDependencyError

# --------------------------------------------------------------------------- memory strings


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("4GiB", 4 * 2**30),
        ("4GB", 4 * 10**9),
        ("4096MB", 4096 * 10**6),
        ("512 MiB", 512 * 2**20),
        ("1.5GB", 1_500_000_000),
        ("4G", 4 * 2**30),
        ("4gib", 4 * 2**30),
        ("1024", 1024),
        (2048, 2048),
    ],
)
def test_parse_memory(text: str | int, expected: int) -> None:
    assert parse_memory(text) == expected


@pytest.mark.parametrize("text", ["4 gigs", "GiB", "", "-4GiB", "0GB", "4XB", "four"])
def test_parse_memory_rejects_garbage_naming_the_value(text: str) -> None:
    with pytest.raises(ClusterConfigError, match="memory"):
        parse_memory(text)


def test_format_memory_round_trips() -> None:
    for n in (4 * 2**30, 4 * 10**9, 1500 * 10**6, 12345):
        assert parse_memory(format_memory(n)) == n


# --------------------------------------------------------------------------- the spec


def test_spec_normalises_memory_and_resources() -> None:
    spec = ClusterSpec(kind="slurm", memory="32GiB", gpus=2)
    assert spec.memory == 32 * 2**30
    assert spec.memory_bytes == 32 * 2**30
    assert spec.worker_resources() == {"GPU": 2}
    assert ClusterSpec(kind="local-gpu").worker_resources() == {"GPU": 1}
    assert ClusterSpec().worker_resources() == {}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kind": "slurmm"}, "unknown cluster kind 'slurmm'.*did you mean 'slurm'"),
        ({"kind": "local", "workers": 0}, "`workers` must be a positive integer"),
        ({"kind": "local", "threads": 0}, "`threads`"),
        ({"kind": "slurm", "gpus": -1}, "`gpus`"),
        ({"kind": "slurm", "adaptive_minimum": 1}, "both"),
        ({"kind": "slurm", "adaptive_minimum": 5, "adaptive_maximum": 2}, "minimum <= maximum"),
        ({"kind": "address"}, "needs `address`"),
        ({"kind": "local", "address": "tcp://x:1"}, "only used with kind 'address'"),
        ({"kind": "slurm", "gpus": 1, "processes": 2}, "one worker process per job"),
        ({"kind": "local", "memory": "lots"}, "not a memory size"),
        ({"kind": "local", "resources": {"GPU": 0}}, "resource 'GPU'"),
    ],
)
def test_spec_errors_are_clear(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ClusterConfigError, match=match):
        ClusterSpec(**kwargs)  # type: ignore[arg-type]


def test_spec_dict_round_trip() -> None:
    spec = ClusterSpec(
        kind="slurm", workers=3, cores=8, memory="32GiB", walltime="02:00:00", queue="gpu",
        account="lab", gpus=1, job_directives=("--constraint=a100",), prologue=("module load cuda",),
        adaptive_minimum=0, adaptive_maximum=10,
    )
    data = spec.to_dict()
    assert data["memory"] == "32GiB"
    assert data["adaptive"] == {"minimum": 0, "maximum": 10}
    assert ClusterSpec.from_dict(data) == spec


def test_resolve_cluster_forms(tmp_path: Path) -> None:
    assert resolve_cluster(None) == ClusterSpec()
    assert resolve_cluster("slurm").kind == "slurm"
    spec = resolve_cluster("tcp://10.0.0.1:8786")
    assert (spec.kind, spec.address) == ("address", "tcp://10.0.0.1:8786")
    assert resolve_cluster("local", workers=3, memory=None).workers == 3
    cfg = tmp_path / "c.toml"
    cfg.write_text('[cluster]\nkind = "pbs"\nmemory = "8GB"\n')
    assert resolve_cluster(str(cfg), queue="long") == ClusterSpec(kind="pbs", memory="8GB", queue="long")
    with pytest.raises(ClusterConfigError, match="neither a cluster kind.*did you mean 'local'"):
        resolve_cluster("locale")


# --------------------------------------------------------------------------- config files


def test_every_example_config_loads_back(tmp_path: Path) -> None:
    for kind in CLUSTER_KINDS:
        path = tmp_path / f"{kind}.toml"
        path.write_text(example_config(kind))
        spec = load_cluster_config(path)
        assert spec.kind == kind


def test_config_file_full(tmp_path: Path) -> None:
    path = tmp_path / "cluster.toml"
    path.write_text(
        "[cluster]\n"
        'kind = "slurm"\nworkers = 4\ncores = 8\nmemory = "32GiB"\nwalltime = "02:00:00"\n'
        'partition = "gpu"\naccount = "mylab"\ngpus = 1\njob-directives = ["--constraint=a100"]\n'
        "adaptive = { minimum = 0, maximum = 20 }\n"
    )
    spec = load_cluster_config(path)
    assert spec.queue == "gpu"  # `partition` is an alias of `queue`
    assert spec.job_directives == ("--constraint=a100",)
    assert (spec.adaptive_minimum, spec.adaptive_maximum) == (0, 20)
    assert spec.memory == 32 * 2**30


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('[cluster]\nkind = "slrum"\n', r"c\.toml.*unknown cluster kind 'slrum'.*did you mean 'slurm'"),
        ('[cluster]\nkind = "slurm"\nmemory = "32 gigs"\n', r"c\.toml.*'32 gigs' is not a memory size"),
        ('[cluster]\nkind = "slurm"\nwaltime = "1:00:00"\n', r"unknown key 'waltime'.*did you mean 'walltime'"),
        ('kind = "slurm"\n', r"must hold one \[cluster\] table"),
        ("[cluster\n", "not valid TOML"),
        ('[cluster]\nkind = "slurm"\njob_directives = "--x"\n', "list of strings"),
        ('[cluster]\nkind = "slurm"\nadaptive = 3\n', "adaptive"),
        ('[cluster]\nkind = "local"\nworkers = "two"\n', "`workers` must be a positive integer"),
    ],
)
def test_config_file_errors_name_file_and_problem(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ClusterConfigError, match=match):
        load_cluster_config(path)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ClusterConfigError, match="does not exist"):
        load_cluster_config(tmp_path / "nope.toml")


# --------------------------------------------------------------------------- job scripts


def _directives(script: str, prefix: str) -> list[str]:
    return [line[len(prefix):].strip() for line in script.splitlines() if line.startswith(prefix)]


def test_slurm_job_script_cpu() -> None:
    spec = ClusterSpec(
        kind="slurm", cores=8, threads=8, memory="32GiB", walltime="02:00:00", queue="short",
        account="lab", job_directives=("--constraint=skylake",), prologue=("module load python",),
    )
    script = job_script(spec, scheduler_address="tcp://sched:8786")
    d = _directives(script, "#SBATCH")
    assert "--cpus-per-task=8" in d
    assert "--mem=32G" in d
    assert "-t 02:00:00" in d
    assert "-p short" in d
    assert "-A lab" in d
    assert "--constraint=skylake" in d
    assert not any("gres" in x for x in d)
    assert "module load python" in script
    assert "tcp://sched:8786" in script
    assert "--resources" not in script
    # tiledseg's worker settings come before the user's prologue, which may change them
    exports = [f"export {k}={v}" for k, v in worker_environment().items()]
    assert all(line in script for line in exports)
    assert max(script.index(line) for line in exports) < script.index("module load python")
    assert worker_environment() == {
        "MALLOC_MMAP_THRESHOLD_": str(64 * 2**20), "MALLOC_TRIM_THRESHOLD_": str(256 * 2**20),
        PROFILE_ENV: "False",
    }


def test_slurm_job_script_gpu_requests_gres_and_advertises_resource() -> None:
    script = job_script(ClusterSpec(kind="slurm", cores=4, memory="16GiB", gpus=2))
    assert "--gres=gpu:2" in _directives(script, "#SBATCH")
    assert "--resources GPU=2" in script


def test_pbs_job_script_gpu() -> None:
    script = job_script(ClusterSpec(kind="pbs", cores=8, memory="32GB", walltime="01:00:00", gpus=1, queue="gpuq"))
    d = _directives(script, "#PBS")
    assert "-l select=1:ncpus=8:mem=32GB:ngpus=1" in d
    assert "-l walltime=01:00:00" in d
    assert "-q gpuq" in d
    assert "--resources GPU=1" in script


def test_lsf_job_script_gpu() -> None:
    script = job_script(ClusterSpec(kind="lsf", cores=8, memory="32GB", walltime="01:00", gpus=1))
    d = _directives(script, "#BSUB")
    assert "-n 8" in d
    assert "-W 01:00" in d
    assert '-gpu "num=1"' in d
    assert "--resources GPU=1" in script


def test_jobqueue_needs_memory() -> None:
    with pytest.raises(ClusterConfigError, match="needs `memory` per job"):
        job_script(ClusterSpec(kind="slurm", cores=4))


def test_job_script_only_for_batch_kinds() -> None:
    with pytest.raises(ClusterConfigError, match="job scripts exist for kinds"):
        job_script(ClusterSpec(kind="local"))


def test_make_slurm_cluster_scales_jobs() -> None:
    # dask-jobqueue starts a scheduler here but submits nothing until scaled; sbatch is absent,
    # so scaling would fail: use adaptive with minimum 0 (no job is submitted).
    pytest.importorskip("dask_jobqueue")  # loads its config defaults before they are changed here
    spec = ClusterSpec(kind="slurm", cores=2, memory="4GiB", gpus=1, adaptive_minimum=0, adaptive_maximum=4)
    with dask.config.set({"jobqueue.slurm.scheduler-options": {"dashboard_address": ":0"}}):
        cluster = make_cluster(spec)
    try:
        script = cluster.job_script()
        assert "--gres=gpu:1" in script
        assert "--resources GPU=1" in script
        assert "--mem=4G" in script
    finally:
        cluster.close()


def test_batch_cluster_waits_for_its_first_worker_then_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fake Slurm: sbatch accepts the job (and keeps its script), the job never starts.
    pytest.importorskip("dask_jobqueue")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f"#!/bin/sh\ncat \"$1\" > {tmp_path}/submitted.sh\necho 'Submitted batch job 4242'\n")
    (bin_dir / "scancel").write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path}/cancelled\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    spec = ClusterSpec(kind="slurm", cores=1, memory="1GiB", workers=1, wait_timeout=1, gpus=1)
    assert spec.starts_late and not ClusterSpec().starts_late
    with dask.config.set({"jobqueue.slurm.scheduler-options": {"dashboard_address": ":0"}}), \
            pytest.raises(ClusterConfigError, match=r"only 0 of 1 Dask workers joined within 1 s.*squeue"), \
            open_client(spec):
        pass
    submitted = (tmp_path / "submitted.sh").read_text()
    assert "#SBATCH --gres=gpu:1" in submitted and "--resources GPU=1" in submitted
    assert "4242" in (tmp_path / "cancelled").read_text()  # the queued job is cancelled on exit


# --------------------------------------------------------------------------- kubernetes


def test_kubernetes_spec_shape() -> None:
    spec = ClusterSpec(kind="kubernetes", workers=3, cores=4, threads=4, memory="16GiB", gpus=1,
                       image="example/tiledseg:1", namespace="imaging", name="slide-7")
    k8s = kubernetes_cluster_spec(spec)
    json.dumps(k8s)  # serialisable
    assert k8s["apiVersion"] == "kubernetes.dask.org/v1"
    assert k8s["kind"] == "DaskCluster"
    assert k8s["metadata"] == {"name": "slide-7", "namespace": "imaging"}
    worker = k8s["spec"]["worker"]
    assert worker["replicas"] == 3
    (container,) = worker["spec"]["containers"]
    assert container["image"] == "example/tiledseg:1"
    assert container["resources"]["limits"] == {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"}
    args = container["args"]
    assert args[:2] == ["dask", "worker"]
    assert args[args.index("--resources") + 1] == "GPU=1"
    assert args[args.index("--nthreads") + 1] == "4"
    sched = k8s["spec"]["scheduler"]
    assert sched["service"]["selector"]["dask.org/cluster-name"] == "slide-7"
    assert {p["port"] for p in sched["service"]["ports"]} == {8786, 8787}
    assert sched["spec"]["containers"][0]["args"][:2] == ["dask", "scheduler"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert {k: env[k] for k in worker_environment()} == worker_environment()


def test_kubernetes_cpu_pods_request_no_gpu() -> None:
    k8s = kubernetes_cluster_spec(ClusterSpec(kind="kubernetes", memory="8GiB"))
    (container,) = k8s["spec"]["worker"]["spec"]["containers"]
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    assert "--resources" not in container["args"]


def test_kubernetes_needs_the_extra() -> None:
    pytest.importorskip("pytest")
    try:
        import dask_kubernetes  # noqa: F401
    except ImportError:
        with pytest.raises(MissingDependencyError, match=r"tiledseg\[kubernetes\]"):
            make_cluster(ClusterSpec(kind="kubernetes"))
    else:  # pragma: no cover - only where the extra is installed
        pytest.skip("dask-kubernetes is installed; creating a cluster needs a Kubernetes API")


def test_local_gpu_needs_the_extra() -> None:
    try:
        import dask_cuda  # noqa: F401
    except ImportError:
        with pytest.raises(MissingDependencyError, match=r"tiledseg\[gpu\]"):
            make_cluster(ClusterSpec(kind="local-gpu"))
        with pytest.raises(MissingDependencyError, match=r"tiledseg\[gpu\]"):
            with open_client(ClusterSpec(kind="local-gpu")):
                pass
    else:  # pragma: no cover - GPU machines
        pytest.skip("dask-cuda is installed")


@pytest.mark.gpu
def test_local_gpu_workers_advertise_one_gpu_each() -> None:
    pytest.importorskip("dask_cuda")
    with open_client(ClusterSpec(kind="local-gpu")) as client:
        info = cluster_info(client)
        assert info.n_workers >= 1
        assert all(w.resources.get("GPU") == 1 for w in info.workers)


def test_address_kind_has_no_cluster_object() -> None:
    with pytest.raises(ClusterConfigError, match="no cluster to create"):
        make_cluster(ClusterSpec(kind="address", address="tcp://127.0.0.1:1"))


# --------------------------------------------------------------------------- clients


def test_local_spec_client_and_info() -> None:
    spec = ClusterSpec(workers=1, threads=2, memory="700MiB", resources={"GPU": 1})
    with open_client(spec) as client:
        info = cluster_info(client)
        assert info.n_workers == 1
        assert info.gpus == 1
        assert info.workers[0].memory_limit == 700 * 2**20
        assert info.workers[0].threads == 2
        assert info.dashboard is not None and info.dashboard.startswith("http")
        json.dumps(info.to_dict())
        assert "1 workers, 2 threads, 700.0 MiB memory, 1 GPU" == info.summary()
        # GPU-resource tasks run on these workers
        assert client.submit(sum, [1, 2], resources={"GPU": 1}).result(timeout=30) == 3
    assert client.status == "closed"


def _profiling(dask_worker: Any) -> tuple[bool, bool]:
    return "profile" in dask_worker.periodic_callbacks, bool(dask.config.get("distributed.worker.profile.enabled"))


def _malloc_env() -> tuple[str | None, str | None]:
    return os.environ.get("MALLOC_MMAP_THRESHOLD_"), os.environ.get("MALLOC_TRIM_THRESHOLD_")


def test_embedded_cluster_runs_without_the_statistical_profiler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PROFILE_ENV, raising=False)
    for key in WORKER_MALLOC:
        # Dask's nannies copy these into this process's environment: start clean, restore after.
        monkeypatch.setenv(key, "0")
        monkeypatch.delenv(key)
    expected = (str(64 * 2**20), str(256 * 2**20))
    with open_client(n_workers=1, processes=True, memory_limit=None) as client:
        assert set(client.run(_profiling).values()) == {(False, False)}
        # worker processes keep freed arrays instead of page-faulting them in afresh
        assert set(client.run(_malloc_env).values()) == {expected}
    assert _malloc_env() == expected  # also inherited by workers started later (adaptive, restarts)
    with open_client(n_workers=1, processes=False) as client:
        assert set(client.run(_profiling).values()) == {(False, True)}  # the process's config is untouched
    assert dask.config.get("distributed.worker.profile.enabled") is True
    for key in WORKER_MALLOC:
        monkeypatch.delenv(key)
    with open_client(ClusterSpec(workers=1, threads=1, memory="700MiB")) as client:
        assert set(client.run(_profiling).values()) == {(False, False)}
        assert set(client.run(_malloc_env).values()) == {expected}
    # a value set in the environment wins, as in Dask
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    with open_client(n_workers=1, processes=True, memory_limit=None) as client:
        assert set(client.run(_malloc_env).values()) == {(expected[0], "131072")}
    # asked for in the environment: Dask's own setting stays
    monkeypatch.setenv(PROFILE_ENV, "True")
    with open_client(n_workers=1, processes=False) as client:
        assert set(client.run(_profiling).values()) == {(True, True)}


def test_open_client_rejects_both_client_and_cluster() -> None:
    with pytest.raises(ClusterConfigError, match="either `client` or `cluster`"):
        with open_client("tcp://127.0.0.1:1", cluster=ClusterSpec()):
            pass


def test_open_client_rejects_wrong_type() -> None:
    with pytest.raises(ClusterConfigError, match="got int"):
        with open_client(3):  # type: ignore[arg-type]
            pass


def test_unreachable_address_is_clear() -> None:
    with pytest.raises(ClusterConfigError, match="could not reach the Dask scheduler"):
        with open_client(ClusterSpec(kind="address", address="tcp://127.0.0.1:9"), connect_timeout=2):
            pass


def test_tile_memory_prediction_and_warning() -> None:
    small = predict_tile_memory(256, 16, 8)
    big = predict_tile_memory(2048, 64, 40)
    assert predict_tile_memory(256, 16, 16) > small  # grows with channels
    assert predict_tile_memory(512, 16, 8) > small  # and with tile size
    assert predict_tile_memory(256, 16, 8, batch=4) == pytest.approx(4 * small, rel=1e-6)
    with pytest.raises(ClusterConfigError, match="tile_size"):
        predict_tile_memory(0, 16, 8)
    info = ClusterInfo("tcp://x", None, (WorkerInfo("a", "a", 2, 2**30, {}),))
    assert info.min_worker_memory() == 2**30

    class FakeClient:
        def scheduler_info(self, n_workers: int = 5) -> dict[str, object]:
            return {"address": "tcp://x", "workers": {"a": {"name": "a", "nthreads": 2, "memory_limit": 2**30}}}

        dashboard_link = None

    assert check_tile_memory(FakeClient(), small) is True  # type: ignore[arg-type]
    with pytest.warns(ResourceWarning, match="smaller tile_size"):
        assert check_tile_memory(FakeClient(), big) is False  # type: ignore[arg-type]


# --------------------------------------------------------------------------- address mode


@pytest.fixture
def scheduler_and_worker(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A real `dask scheduler` and `dask worker` on localhost, always torn down."""
    dask_cli = Path(sys.executable).with_name("dask")
    sched_file = tmp_path / "scheduler.json"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(subprocess.Popen(
            [str(dask_cli), "scheduler", "--host", "127.0.0.1", "--port", "0",
             "--dashboard-address", ":0", "--scheduler-file", str(sched_file)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))
        deadline = time.monotonic() + 60
        while not sched_file.exists() or not sched_file.read_text().strip():
            if time.monotonic() > deadline or procs[0].poll() is not None:
                pytest.fail("dask scheduler did not start")
            time.sleep(0.2)
        time.sleep(0.2)
        address = json.loads(sched_file.read_text())["address"]
        procs.append(subprocess.Popen(
            [str(dask_cli), "worker", address, "--nthreads", "1", "--memory-limit", "500MiB",
             "--resources", "GPU=1", "--no-dashboard", "--name", "w0", "--death-timeout", "10"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))
        yield address
    finally:
        for p in reversed(procs):  # the worker first, then the scheduler
            p.kill()
            p.wait(timeout=20)


def test_address_mode_against_real_scheduler(scheduler_and_worker: str) -> None:
    address = scheduler_and_worker
    spec = resolve_cluster(address)
    with open_client(spec, wait_for_workers=1, wait_timeout=60) as client:
        info = cluster_info(client)
        assert info.scheduler == address
        assert [w.name for w in info.workers] == ["w0"]
        assert info.workers[0].resources == {"GPU": 1.0}
        assert info.workers[0].memory_limit == 500 * 2**20
        assert client.submit(pow, 2, 10, resources={"GPU": 1}).result(timeout=30) == 1024
    assert client.status == "closed"
