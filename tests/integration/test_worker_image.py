"""The worker *image* serves the demo's verdicts against the local stack, run as the chart runs it.

Everything else starts dfmod from .venv; this builds `dfmod-worker` with deploy/images.sh (the repository's
Dockerfile, Debian-made bases where no registry answers) and runs it with the chart's security context: uid 10001,
read-only root, no capabilities, only /tmp writable, on the host network to the stack's Kafka, Redis and Triton.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from harness import REPO, Stack, Topics, collect, free_port

from tests.conftest import container_engine

from . import media
from .test_reliability import by_id, send

pytestmark = pytest.mark.needs_container_engine

IMAGE = "localhost/dfmod-worker:0.1.0"
#: The chart's defaults: drain_timeout_s 30, terminationGracePeriodSeconds = drain + 30.
GRACE_S = 30 + 30


def engine() -> str:
    found = container_engine()
    assert found is not None  # the marker deselects this module otherwise
    return found


def sh(*args: str, timeout_s: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([engine(), *args], capture_output=True, text=True, timeout=timeout_s, check=check)


@pytest.fixture(scope="module")
def worker_image() -> str:
    """Build (warm: layer cache, seconds) the worker image once per session."""
    t0 = time.monotonic()
    done = subprocess.run([str(REPO / "deploy" / "images.sh"), "build", "worker"], capture_output=True, text=True,
                          timeout=3000)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    print(f"\nworker image built in {time.monotonic() - t0:.0f} s:\n" + "\n".join(
        line for line in done.stdout.splitlines() if line.startswith(("images:", "==", "   "))))
    return IMAGE


class Container:
    """One `dfmod worker` container; removed (by name) in the test's finally."""

    def __init__(self, image: str, env: dict[str, str], http_port: int) -> None:
        self.name = f"dfmod-test-{uuid.uuid4().hex[:10]}"
        self.http_port = http_port
        flags = [f"--env={k}={v}" for k, v in sorted(env.items())]
        sh("run", "-d", "--name", self.name, "--network", "host",
           # the chart's securityContext: runAsUser/Group 10001, readOnlyRootFilesystem, drop ALL, /tmp emptyDir
           "--user", "10001:10001", "--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
           "--tmpfs", "/tmp:rw,size=256m,mode=1777", *flags, image)

    def logs(self) -> str:
        done = sh("logs", self.name, check=False)
        return done.stdout + done.stderr

    def state(self) -> str:
        return sh("inspect", "--format", "{{.State.Status}}", self.name, check=False).stdout.strip()

    def wait_ready(self, timeout_s: float = 180) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.state() == "running", f"container left early:\n{self.logs()[-4000:]}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/readyz", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"container not ready after {timeout_s}s:\n{self.logs()[-4000:]}")

    def healthcheck(self) -> None:
        """The image's own HEALTHCHECK, run as the engine runs it (podman keeps it only in docker format)."""
        test = sh("image", "inspect", "--format", "{{json .Config.Healthcheck}}", IMAGE).stdout
        assert "healthz" in test, f"the image lost its HEALTHCHECK: {test}"
        if engine() == "podman":
            done = sh("healthcheck", "run", self.name, check=False)
            assert done.returncode == 0, done.stdout + done.stderr
        else:  # docker runs it on its own timer; the same command, now
            done = sh("exec", self.name, "python", "-c", "import os, urllib.request; urllib.request.urlopen("
                      "'http://127.0.0.1:%s/healthz' % os.environ['DFMOD_HTTP_PORT'], timeout=4)", check=False)
            assert done.returncode == 0, done.stdout + done.stderr

    def terminate(self, grace_s: float) -> tuple[int, float]:
        """SIGTERM as the kubelet sends it; (exit code, seconds to exit)."""
        t0 = time.monotonic()
        sh("kill", "--signal", "TERM", self.name)
        done = sh("wait", self.name, timeout_s=grace_s + 30)
        return int(done.stdout.strip().splitlines()[-1]), time.monotonic() - t0

    def remove(self) -> None:
        sh("rm", "-f", "-t", "0", self.name, check=False)


@pytest.fixture
def run_image(worker_image: str, conn: dict[str, str], topics: Topics) -> Iterator[Callable[..., Container]]:
    started: list[Container] = []

    def factory(**overrides: str) -> Container:
        port = free_port()
        env = {**conn, **topics.env(), "DFMOD_HTTP_PORT": str(port), "DFMOD_HTTP_HOST": "127.0.0.1",
               "DFMOD_MEDIA_THREADS": "2", "DFMOD_LOG_LEVEL": "INFO",
               "DFMOD_CACHE__KEY_PREFIX": f"dfmod:verdict:{topics.events}:", **overrides}
        c = Container(worker_image, env, port)
        started.append(c)
        return c

    try:
        yield factory
    finally:
        for c in started:
            c.remove()


def test_worker_image_serves_the_demo_verdicts(run_image: Callable[..., Container], bootstrap: str,
                                               topics: Topics) -> None:
    worker = run_image()
    worker.wait_ready()
    worker.healthcheck()
    still, video, broken = media.still_png(), media.video_mp4(), media.corrupt_mp4()
    first = [media.event(still), media.event(video), media.event(broken)]
    send(bootstrap, topics.events, first)
    verdicts = by_id(collect(bootstrap, topics.verdicts, {e[0] for e in first}, timeout_s=180))
    repeat = [media.event(still)]  # the same bytes again: answered from Redis
    send(bootstrap, topics.events, repeat)
    verdicts = by_id(collect(bootstrap, topics.verdicts, {e[0] for e in first + repeat}, timeout_s=120))
    got = {name: verdicts[e[0]][0]["data"] for name, e in zip(("still", "video", "corrupt", "repeat"),
                                                               first + repeat, strict=True)}
    for name, data in got.items():
        print(f"{name:8s} status={data['status']:9s} cached={data['cached']!s:5s} error={data.get('error')}")
    assert got["still"]["status"] == "ok" and got["video"]["status"] == "ok", got
    assert got["corrupt"]["status"] in ("rejected", "error") and got["corrupt"]["error"], got["corrupt"]
    assert got["repeat"]["status"] == "ok" and got["repeat"]["cached"], got["repeat"]
    worker.healthcheck()
    code, seconds = worker.terminate(GRACE_S)
    print(f"idle container: SIGTERM -> exit {code} in {seconds:.1f} s")
    warnings = [line for line in worker.logs().splitlines() if "WARN" in line.upper()]
    print(f"{len(warnings)} warning line(s) in the container's log" + "".join(f"\n  {w[:200]}" for w in warnings[:5]))
    assert code == 0, worker.logs()[-4000:]


def test_worker_image_drains_on_sigterm_mid_work(run_image: Callable[..., Container], bootstrap: str,
                                                 topics: Topics) -> None:
    """A short drain (5 s, grace = drain + 30 as the chart sets it) with more work in flight than it can finish."""
    drain_s = 5
    grace_s = drain_s + 30
    blobs = [media.video_mp4(seconds=2.0 + 0.1 * i) if i % 2 else media.still_jpeg(quality=60 + i) for i in range(24)]
    sent = [media.event(b) for b in blobs]
    ids = {s[0] for s in sent}
    send(bootstrap, topics.events, sent)
    worker = run_image(DFMOD_CACHE__ENABLED="false", DFMOD_DRAIN_TIMEOUT_S=str(drain_s))
    worker.wait_ready()
    before = len(by_id(collect(bootstrap, topics.verdicts, 2, timeout_s=180)))  # mid-work now
    code, seconds = worker.terminate(grace_s)
    logs = worker.logs()
    answered = by_id(collect(bootstrap, topics.verdicts, ids, timeout_s=5))
    print(f"SIGTERM mid-work ({before}/{len(ids)} answered): exit {code} in {seconds:.1f} s "
          f"(drain {drain_s} s, grace {grace_s} s); {len(answered)}/{len(ids)} answered when it left")
    assert before < len(ids), "everything was answered before SIGTERM: not mid-work"
    assert code == 0, logs[-4000:]
    assert seconds < grace_s, f"took {seconds:.1f} s, the grace period is {grace_s} s"
    assert "drained" in logs, logs[-4000:]
    statuses = [v["data"]["status"] for vs in answered.values() for v in vs]
    assert set(statuses) <= {"ok"}, f"it answered work it did not finish: {statuses}"
    # What it did not finish is left to the next owner: a second container answers the rest.
    successor = run_image(DFMOD_CACHE__ENABLED="false")
    successor.wait_ready()
    verdicts = by_id(collect(bootstrap, topics.verdicts, ids, timeout_s=240))
    assert set(verdicts) == ids, f"missing verdicts for {ids - set(verdicts)}"
    assert {v["data"]["status"] for vs in verdicts.values() for v in vs} == {"ok"}
    twice = [i for i, vs in verdicts.items() if len(vs) > 1]
    # At-least-once (DESIGN.md, publish): a verdict whose offset the drain could not commit is answered again by
    # the successor, under the same event id; each again an ok verdict, which the line above checked.
    print(f"successor answered {len(ids) - len(answered)} more; answered twice (at-least-once): {len(twice)}")


TRAIN_IMAGE = "localhost/dfmod-train:0.1.0"


def test_training_image_exports_what_triton_serves_to_the_worker_image(
    worker_image: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """`dfmod-train` (opt-in: `make images-train`, several GB) describes ViT-L-14 and exports the stand-in into a
    mounted folder; a stack whose Triton serves that folder answers the worker image's request."""
    if sh("image", "inspect", TRAIN_IMAGE, check=False).returncode != 0:
        pytest.skip(f"{TRAIN_IMAGE} not built (opt-in: make images-train)")
    out = tmp_path_factory.mktemp("export")
    os.chown(out, 10001, 10001)
    chart_like = ["run", "--rm", "--no-healthcheck", "--network", "none", "--user", "10001:10001", "--read-only",
                  "--cap-drop", "ALL", "--tmpfs", "/tmp:rw,size=512m,mode=1777"]
    described = sh(*chart_like, TRAIN_IMAGE, "describe", "--arch", "ViT-L-14", timeout_s=600)
    assert "303,181,826" in described.stdout, described.stdout[-2000:]
    # --out is a folder inside the mount: export stages beside its target and renames it into place.
    sh(*chart_like, "-v", f"{out}:/export", TRAIN_IMAGE, "export", "--arch", "tiny", "--weights", "random-init",
       "--out", "/export/triton_models", "--backend", "python", timeout_s=600)
    repo = out / "triton_models"
    assert (repo / "deepfake_clip" / "config.pbtxt").is_file()
    stack = Stack(stack_dir=tmp_path_factory.mktemp("stack-export"), model_repo=repo)
    worker: Container | None = None
    try:
        conn = stack.up()
        bootstrap = conn["DFMOD_KAFKA__BOOTSTRAP_SERVERS"]
        topics = Topics.fresh(bootstrap, prefix="export")
        port = free_port()
        worker = Container(worker_image, {**conn, **topics.env(), "DFMOD_HTTP_PORT": str(port),
                                          "DFMOD_HTTP_HOST": "127.0.0.1"}, port)
        worker.wait_ready()
        sent = [media.event(media.still_png())]
        send(bootstrap, topics.events, sent)
        verdicts = by_id(collect(bootstrap, topics.verdicts, {sent[0][0]}, timeout_s=120))
        data = verdicts[sent[0][0]][0]["data"]
        print(f"exported by the training image, served by Triton: status={data['status']}")
        assert data["status"] == "ok", data
    finally:
        if worker is not None:
            worker.remove()
        stack.down()
