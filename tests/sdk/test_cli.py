"""The `boothstudio` command line end to end: each command as a subprocess against the real
services (conftest.py's stack), bad input, unreachable servers and `serve`.

Every command's RPC is implemented: an UNIMPLEMENTED answer fails the test.
Rerun: `.venv/bin/pytest tests/sdk/test_cli.py -v`
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from boothstudio.clients.sdk import BoothStudio
from boothstudio.clients.sdk.cli import EXIT_CODES, EXIT_PIPE_CLOSED, exit_code_for, main
from boothstudio.clients.sdk.errors import Internal, NotFound, TrainingJobFailed, Unavailable
from tests.helpers import ROOT, free_port, service_env
from tests.sdk.conftest import Stack, usable_model

CLI = [sys.executable, "-m", "boothstudio.clients.sdk"]


def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        cwd=ROOT,
        env=service_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_here(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI's main() in this process (fast; same code path as the console script)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse usage errors
            code = int(exc.code or 0)
    return subprocess.CompletedProcess(["boothstudio", *args], code, out.getvalue(), err.getvalue())


def on(
    stack: Stack, *args: str, timeout: float = 300, process: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run a command against the stack (in this process, or as a real subprocess with
    `process=True`); skip while the service answers UNIMPLEMENTED."""
    if process:
        res = run(*args, env=stack.env, timeout=timeout)
    else:
        res = run_here(*stack.address_args(), *args)
    if res.returncode == 1 and "not implemented" in res.stderr:
        pytest.fail(f"service answered UNIMPLEMENTED: {res.stderr.strip()}")
    return res


def one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


# --------------------------------------------------------------------- no server needed


def test_unreachable_server_exit_4() -> None:
    res = run("--catalog", "127.0.0.1:1", "--timeout", "3", "models", "list")
    assert res.returncode == 4
    line = one_line(res.stderr)
    assert "cannot reach the catalog at 127.0.0.1:1" in line


def test_usage_errors_exit_2() -> None:
    res = run("generate", "a cat", "--steps", "many")  # as a real process once
    assert res.returncode == 2 and "--steps" in one_line(res.stderr)
    res = run_here("generate")  # missing prompt
    assert res.returncode == 2 and "prompt" in one_line(res.stderr)
    res = run_here("--generator", "127.0.0.1:1", "edit", "/no/such/file.png", "a cat")
    assert res.returncode == 2
    assert "init_image: no such file" in one_line(res.stderr)
    res = run_here("--trainer", "127.0.0.1:1", "train", "--config", "/no/such.yaml")
    assert res.returncode == 2 and "config_file" in one_line(res.stderr)
    res = run_here("--trainer", "127.0.0.1:1", "train", str(ROOT), "--set", "max_train_stepz=3")
    assert res.returncode == 2
    assert "config.max_train_stepz" in one_line(res.stderr) and "max_train_steps" in res.stderr
    res = run_here("--json", "--generator", "127.0.0.1:1", "generate", "x", "--opt", "eta")
    assert res.returncode == 2 and "KEY=VALUE" in res.stderr
    res = run_here("--trainer", "127.0.0.1:1", "train")
    assert res.returncode == 2 and "folder of images" in one_line(res.stderr)


def test_exit_code_table() -> None:
    assert exit_code_for(NotFound("x"))[0] == 3
    assert exit_code_for(Unavailable("x"))[0] == 4
    assert exit_code_for(Internal("x"))[0] == 1
    assert exit_code_for(TrainingJobFailed("x"))[0] == 1
    assert {code for _, code, _ in EXIT_CODES} == {1, 2, 3, 4, 5, 6}


def test_help_lists_every_command() -> None:
    res = run_here("--help")
    assert res.returncode == 0
    for command in ("serve", "generate", "edit", "train", "jobs", "models", "samplers", "gallery"):
        assert command in res.stdout
    assert "130" in res.stdout  # exit codes are documented


BLOCKED_SERVE = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "diffusers"):
            raise ImportError(name + " is blocked")
sys.meta_path.insert(0, Block())
from boothstudio.clients.sdk.cli import main
sys.exit(main(["serve"]))
"""


def test_serve_without_the_services_extra() -> None:
    res = subprocess.run(
        [sys.executable, "-c", BLOCKED_SERVE],
        cwd=ROOT,
        env=service_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 1
    assert "pip install 'boothstudio[services]'" in one_line(res.stderr)


def test_serve_starts_and_stops_services(tmp_path: Path) -> None:
    port, metrics = free_port(), free_port()
    env = service_env(
        {"BOOTHSTUDIO_CATALOG_PORT": str(port), "BOOTHSTUDIO_CATALOG_METRICS_PORT": str(metrics)}
    )
    proc = subprocess.Popen(
        [*CLI, "serve", "--services", "catalog", "--data-dir", str(tmp_path)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with BoothStudio(f"127.0.0.1:{port}", timeout=2) as client:
            deadline = time.monotonic() + 60
            while True:
                health = [h for h in client.health(timeout=1) if h.service == "catalog"]
                if health[0].serving:
                    break
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "catalog did not start"
                time.sleep(0.2)
            assert client.list_models().total_size >= 0
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------- against services


def test_models_samplers_backends_health(stack: Stack) -> None:
    res = on(stack, "--json", "models", "list")
    assert res.returncode == 0, res.stderr
    models = json.loads(res.stdout)
    assert isinstance(models, list)
    assert on(stack, "health").returncode == 0
    res = on(stack, "models", "get", "no-such-model")
    assert res.returncode == 3 and "no-such-model" in one_line(res.stderr)
    if models:
        res = on(stack, "--json", "models", "get", models[0]["id"])
        assert json.loads(res.stdout)["id"] == models[0]["id"]
    res = on(stack, "samplers")
    assert (res.returncode == 0 and "--opt" in res.stdout) or "schedules" in res.stdout
    res = on(stack, "--json", "samplers")
    assert json.loads(res.stdout)["samplers"]
    res = on(stack, "--json", "backends")
    assert any(b["is_default"] for b in json.loads(res.stdout))


def test_generate_writes_pngs(stack: Stack, tmp_path: Path) -> None:
    res = on(
        stack,
        "--json",
        "generate",
        "a red circle",
        "--seed",
        "7",
        "-c",
        "2",
        "--steps",
        "3",
        "-W",
        "64",
        "-H",
        "64",
        "-o",
        str(tmp_path),
        process=True,
    )
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["seeds"] == [7, 8] and len(out["images"]) == 2
    for img in out["images"]:
        assert Image.open(img["path"]).size == (64, 64)
    # progress bar on stderr when asked for
    res = on(
        stack,
        "generate",
        "a blue square",
        "--steps",
        "3",
        "-W",
        "64",
        "-H",
        "64",
        "-o",
        str(tmp_path),
        "--progress",
        "always",
    )
    assert res.returncode == 0
    assert "step 3/3" in res.stderr and res.stdout.strip().endswith(".png")


def test_generate_prefix_progress_and_bad_seed(stack: Stack, tmp_path: Path) -> None:
    small = ("--steps", "2", "-W", "64", "-H", "64", "-o", str(tmp_path))
    res = on(stack, "generate", "a red circle", "-c", "3", "--prefix", "red", *small,
             "--progress", "always")
    assert res.returncode == 0, res.stderr
    names = sorted(Path(line).name for line in res.stdout.split())
    assert len(names) == 3 and all(n.startswith("red-gen-") for n in names), names
    assert [n.rsplit("-", 1)[1] for n in names] == ["0.png", "1.png", "2.png"]
    # images counted from 1 as the progress line counts them
    assert "image 1/3" in res.stderr and "image 0 ready" not in res.stderr
    assert "image 1 ready" in res.stderr and "image 3 ready" in res.stderr
    res = on(stack, "generate", "a red circle", "--prefix", "blue_", "--seed", "3", *small)
    assert Path(res.stdout.strip()).name.startswith("blue_gen-")  # no second separator
    # a negative seed other than -1 (random) is refused, naming the field
    res = on(stack, "generate", "a red circle", "--seed", "-5", *small)
    assert res.returncode == 2 and "seed" in one_line(res.stderr), res.stderr


def test_json_into_a_closed_pipe_is_quiet(stack: Stack) -> None:
    """`boothstudio --json models list | head -c 0`: no "Broken pipe", no traceback."""
    proc = subprocess.Popen(
        [*CLI, "--json", "models", "list"],
        cwd=ROOT,
        env=service_env(stack.env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the command writes anything
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == EXIT_PIPE_CLOSED, err
    assert err == "", err


def test_generate_bad_value_exit_2_names_the_field(stack: Stack) -> None:
    res = on(stack, "generate", "a red circle", "--steps", "999")
    assert res.returncode == 2
    assert "steps" in one_line(res.stderr)


def test_edit_and_gallery(stack: Stack, tmp_path: Path) -> None:
    init = tmp_path / "init.png"
    Image.new("RGB", (64, 64), "red").save(init)
    mask = tmp_path / "mask.png"
    Image.new("L", (64, 64), 255).save(mask)
    res = on(
        stack,
        "--json",
        "edit",
        str(init),
        "a green circle",
        "--mask",
        str(mask),
        "--strength",
        "0.6",
        "--steps",
        "3",
        "--seed",
        "1",
        "-o",
        str(tmp_path / "out"),
    )
    assert res.returncode == 0, res.stderr
    image_id = json.loads(res.stdout)["images"][0]["image_id"]
    res = on(stack, "--json", "gallery", "get", image_id)
    assert json.loads(res.stdout)["has_mask"] is True
    res = on(stack, "gallery", "export", image_id, "-o", str(tmp_path / "export"))
    assert Path(res.stdout.strip()).is_file()
    assert on(stack, "gallery", "list").returncode == 0
    res = on(stack, "gallery", "delete", image_id)
    assert res.returncode == 0 and "deleted 1" in res.stdout
    assert on(stack, "gallery", "get", image_id).returncode == 3


def test_train_jobs(stack: Stack, tmp_path: Path) -> None:
    res = on(stack, "--json", "models", "list")
    base = usable_model(json.loads(res.stdout))
    folder = tmp_path / "subject"
    folder.mkdir()
    for i in range(2):
        Image.new("RGB", (64, 64), ("orange", "gold")[i]).save(folder / f"{i}.png")
    res = on(
        stack,
        "train",
        str(folder),
        "--base-model",
        base,
        "--class-noun",
        "ball",
        "--steps",
        "2",
        "--progress",
        "always",
        timeout=600,
        process=True,
    )
    assert res.returncode == 0, res.stderr
    model_id = res.stdout.strip()
    assert model_id and "loss" in res.stderr
    jobs = json.loads(on(stack, "--json", "jobs", "list").stdout)
    job_id = next(j["job_id"] for j in jobs if j["output_model_id"] == model_id)
    assert on(stack, "jobs", "get", job_id).returncode == 0
    assert on(stack, "jobs", "watch", job_id).stdout.strip() == model_id
    assert on(stack, "jobs", "delete", job_id).returncode == 0
    assert on(stack, "jobs", "get", job_id).returncode == 3
    # a job that has not ended cannot resume: its state is named as the CLI names states
    job_id = on(stack, "train", str(folder), "--base-model", base, "--class-noun", "ball",
                "--steps", "50", "--no-wait").stdout.strip()
    res = on(stack, "jobs", "resume", job_id)
    assert on(stack, "jobs", "cancel", job_id).returncode == 0
    assert res.returncode == 6 and "TRAINING_JOB_STATE" not in res.stderr, res.stderr
    assert any(f"job is {s}" in res.stderr for s in ("queued", "preparing", "running"))
    res = on(stack, "train", str(folder), "--set", "max_train_steps=0", "--base-model", base)
    assert res.returncode == 2 and "max_train_steps" in one_line(res.stderr)
    assert os.environ.get("BOOTHSTUDIO_CATALOG") is None  # the tests never leak env
