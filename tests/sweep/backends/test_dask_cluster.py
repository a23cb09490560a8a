"""What only the dask backend does, beyond the contract every backend keeps
(tests/sweep/test_backends.py), on a real cluster started as README's "More machines" starts one
(the `dask` command: a scheduler, then worker processes) where it matters: a scheduler
killed mid-sweep ends it with one line; a task whose workers kept dying fails with a reason;
a sweep started before any worker joins waits; an address where no dask scheduler answers
is one error within the deadline; TLS."""

import contextlib
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from studies import tiny_spec

from bnstudy.sweep.backends.dask_cluster import _outcome
from bnstudy.cli import main
from bnstudy.config.spec import load_study
from bnstudy.results.store import RunStore

distributed = pytest.importorskip("distributed")

ROOT = Path(__file__).resolve().parents[3]
# Workers run `git status` (a run's git_commit), which takes .git/index.lock to refresh the
# index; killed at that moment, one would leave the lock behind in this checkout.
NO_GIT_LOCKS = {"GIT_OPTIONAL_LOCKS": "0"}
DASK = Path(sys.executable).with_name("dask")  # the console script installed beside this Python
SPEC = tiny_spec("tiny", 'variant = ["none", "bn_before", "bn_after"]\nseed = [0, 1, 2]\n', epochs=1, batch_size=32)
needs_dask_command = pytest.mark.skipif(not DASK.exists(), reason=f"no dask command at {DASK}")


def wait_for(condition, what: str, timeout: float = 120) -> None:
    """Poll `condition` until it is true; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.01)


@contextlib.contextmanager
def started(command: list[str], log: Path, **env: str):
    """Run `command` in its own process group, output to `log`; kill the group on exit."""
    with open(log, "w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
                                   env={**os.environ, **env})  # fmt: skip
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@contextlib.contextmanager
def dask_cluster(folder: Path, workers: int):
    """`dask scheduler` and `dask worker ADDR --nthreads 1 --nworkers N` on localhost, the
    workers importing this checkout; yields (address, the scheduler's process)."""
    scheduler_file = folder / "scheduler.json"
    scheduler_command = [str(DASK), "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                         "--scheduler-file", str(scheduler_file)]  # fmt: skip
    with started(scheduler_command, folder / "scheduler.log") as scheduler:
        wait_for(lambda: scheduler_file.exists() and scheduler_file.read_text().strip(), "the scheduler")
        address = json.loads(scheduler_file.read_text())["address"]
        with started([str(DASK), "worker", address, "--nthreads", "1", "--nworkers", str(workers), "--no-dashboard",
                      "--local-directory", str(folder / "workers")], folder / "workers.log",
                     PYTHONPATH=str(ROOT), **NO_GIT_LOCKS):  # fmt: skip
            with distributed.Client(address, timeout=60) as client:
                client.wait_for_workers(workers, timeout=120)
            yield address, scheduler


def sweep_in_thread(argv: list[str], status: list) -> threading.Thread:
    """`bnstudy` with argv in a thread of this process; its exit status goes to `status`."""
    thread = threading.Thread(target=lambda: status.append(main(argv)), daemon=True)
    thread.start()
    return thread


@needs_dask_command
def test_a_scheduler_killed_mid_sweep_ends_it_with_one_line_keeping_the_finished_runs(tmp_path):
    spec, out = tmp_path / "tiny.toml", tmp_path / "out"
    spec.write_text(SPEC)
    store = RunStore(out)
    with dask_cluster(tmp_path, 1) as (address, scheduler):
        # A process of its own, so that all it prints is read, distributed's logging included.
        sweep = subprocess.Popen([sys.executable, "-m", "bnstudy", "sweep", str(spec), "--out", str(out), "--backend",
                                  "dask", "--scheduler", address], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                 text=True, env={**os.environ, **NO_GIT_LOCKS})  # fmt: skip
        try:
            wait_for(lambda: list(store.runs_dir.glob("*.json")) or sweep.poll() is not None, "a first run")
            os.killpg(scheduler.pid, signal.SIGKILL)
            _, err = sweep.communicate(timeout=120)
        finally:
            sweep.kill()
            sweep.wait()
    assert sweep.returncode == 2 and "Traceback" not in err, err
    assert err.splitlines()[-1] == (f"bnstudy: error: lost the dask scheduler at {address}; finished runs are kept, "
                                    "the same command reruns the rest")  # fmt: skip
    done = [path.stem for path in store.runs_dir.glob("*.json")]
    assert done and all(store.state(run_id) == "complete" for run_id in done)


def test_a_task_whose_workers_kept_dying_is_a_failure_saying_how_often_and_where():
    """What the scheduler's KilledWorker (the task given up: allowed-failures reached) becomes."""
    from distributed.scheduler import KilledWorker

    class Finished:  # a future whose task the scheduler gave up
        def __init__(self, exc):
            self.exc = exc

        def cancelled(self):
            return False

        def exception(self):
            return self.exc

    last = type("WorkerState", (), {"address": "tcp://10.0.0.7:4100"})()
    for allowed, died in ((0, "died once"), (2, "died 3 times, the last")):
        failure = _outcome(Finished(KilledWorker("key", last, allowed)), ["run a"], "tcp://10.0.0.5:8786")
        assert failure.task == ["run a"]
        assert failure.error.splitlines()[0] == (f"KilledWorker: the dask worker running this task {died} on "
                                                 "tcp://10.0.0.7:4100; see its log")  # fmt: skip


def test_a_sweep_started_before_any_worker_joins_waits_for_one(tmp_path, capsys):
    spec = tmp_path / "tiny.toml"
    spec.write_text(SPEC.replace("seed = [0, 1, 2]", "seed = [0]"))
    with distributed.LocalCluster(
            n_workers=0, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:  # fmt: skip
        status = []
        sweep = sweep_in_thread(["sweep", str(spec), "--out", str(tmp_path / "out"), "--backend", "dask",
                                 "--scheduler", cluster.scheduler_address], status)  # fmt: skip
        wait_for(lambda: cluster.scheduler.tasks or not sweep.is_alive(), "the sweep's tasks")
        cluster.scale(1)
        sweep.join(timeout=120)
        assert not sweep.is_alive(), "the sweep hangs"
    printed = capsys.readouterr()
    assert status == [0], printed.err
    assert "3 runs in" in printed.out
    assert "no dask worker has joined yet" in printed.out
    assert "eta: waiting for a worker" in printed.err and "eta ~0s" not in printed.err.split("waiting")[0]


# ---------------------------------------------------------------- an address that is no scheduler
@contextlib.contextmanager
def silent_server():
    """A TCP server on localhost that accepts connections and never says a word; yields its port."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted = []

    def accept():
        with contextlib.suppress(OSError):  # the server closed
            while True:
                accepted.append(server.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield server.getsockname()[1]
    finally:
        server.close()
        for connection in accepted:
            connection.close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass  # its log goes to stderr, which the test reads


@contextlib.contextmanager
def http_server():
    """An HTTP server on localhost (what `python3 -m http.server` runs); yields its port."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), QuietHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("server", [silent_server, http_server])
def test_an_address_where_no_scheduler_answers_is_one_error_within_the_deadline(tmp_path, capsys, server):
    import dask

    spec, out = tmp_path / "tiny.toml", tmp_path / "out"
    spec.write_text(SPEC)
    status = []
    with server() as port, dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        argv = ["sweep", str(spec), "--out", str(out), "--backend", "dask", "--scheduler", f"tcp://127.0.0.1:{port}"]
        sweep = threading.Thread(target=lambda: status.append(main(argv)), daemon=True)
        sweep.start()
        sweep.join(timeout=60)  # far beyond the 1 s deadline; without one it waits forever
    assert status == [2], "the sweep is still waiting for an answer"
    err = capsys.readouterr().err
    assert err == (f"bnstudy: error: --scheduler tcp://127.0.0.1:{port}: cannot connect: no dask scheduler answered "
                   "within 1 s (is one running there? `dask scheduler` prints its address)\n")  # fmt: skip
    assert not out.exists()


# ---------------------------------------------------------------- a cluster over TLS
def certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A CA made here and one certificate it signs, with its key, for 127.0.0.1, which the
    scheduler, the worker and the sweep all present (dask's TLS is mutual: no certificate
    signed by the CA, no connection). (ca.pem, node.pem, node.key)."""
    import datetime

    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def name(text: str):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())

    def signed(subject: str, public_key, extensions) -> "x509.Certificate":
        builder = (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name("bnstudy test CA"))
                   .public_key(public_key).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1)))  # fmt: skip
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        return builder.sign(ca_key, hashes.SHA256())

    import ipaddress

    ca = signed("bnstudy test CA", ca_key.public_key(), [(x509.BasicConstraints(ca=True, path_length=None), True)])
    node = signed("127.0.0.1", key.public_key(), [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
         False),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
         False)])  # fmt: skip
    paths = folder / "ca.pem", folder / "node.pem", folder / "node.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(node.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))  # fmt: skip
    return paths


@contextlib.contextmanager
def tls_cluster(folder: Path, ca: Path, cert: Path, key: Path):
    """README's TLS recipe on localhost: `dask scheduler --protocol tls` and one `dask worker`
    with the certificates; yields the scheduler's tls:// address."""
    tls = ["--tls-ca-file", str(ca), "--tls-cert", str(cert), "--tls-key", str(key)]
    scheduler_file = folder / "scheduler.json"
    with started([str(DASK), "scheduler", "--host", "127.0.0.1", "--port", "0", "--protocol", "tls", *tls,
                  "--no-dashboard", "--scheduler-file", str(scheduler_file)], folder / "scheduler.log"):  # fmt: skip
        wait_for(lambda: scheduler_file.exists() and scheduler_file.read_text().strip(), "the scheduler")
        address = json.loads(scheduler_file.read_text())["address"]
        with started([str(DASK), "worker", address, "--nthreads", "1", "--nworkers", "1", *tls, "--no-dashboard",
                      "--local-directory", str(folder / "workers")], folder / "workers.log",
                     PYTHONPATH=str(ROOT), **NO_GIT_LOCKS):  # fmt: skip
            security = distributed.security.Security(tls_ca_file=str(ca), tls_client_cert=str(cert),
                                                     tls_client_key=str(key), require_encryption=True)  # fmt: skip
            with distributed.Client(address, timeout=60, security=security) as client:
                client.wait_for_workers(1, timeout=120)
            yield address


@needs_dask_command
def test_a_sweep_over_tls_with_certificates_from_flags_or_daskss_config(tmp_path, capsys):
    import dask

    ca, cert, key = certificates(tmp_path)
    spec, out = tmp_path / "tiny.toml", tmp_path / "out"
    spec.write_text(SPEC.replace('variant = ["none", "bn_before", "bn_after"]', 'variant = ["none"]'))
    store = RunStore(out)
    with tls_cluster(tmp_path, ca, cert, key) as address:
        assert address.startswith("tls://127.0.0.1:")
        argv = ["sweep", str(spec), "--out", str(out), "--backend", "dask", "--scheduler", address]
        flags = ["--tls-ca-file", str(ca), "--tls-cert", str(cert), "--tls-key", str(key)]
        assert main([*argv, *flags, "--set", "grid.seed=[0]"]) == 0
        assert "1 run in" in capsys.readouterr().out
        # the certificates from dask's configuration (DASK_DISTRIBUTED__COMM__TLS__CA_FILE, ...CLIENT__CERT, ...KEY)
        with dask.config.set({"distributed.comm.tls.ca-file": str(ca), "distributed.comm.tls.client.cert": str(cert),
                              "distributed.comm.tls.client.key": str(key)}):  # fmt: skip
            assert main([*argv, "--set", "grid.seed=[0, 1]"]) == 0
        assert "1 already done, 1 to run" in capsys.readouterr().out
        # without a certificate the sweep is one line, and no run is written
        assert main([*argv, "--set", "grid.seed=[2]"]) == 2
        err = capsys.readouterr().err
        assert err == (f"bnstudy: error: --scheduler {address}: a tls:// scheduler needs the cluster's CA certificate "
                       "and this client's certificate and key: --tls-ca-file, --tls-cert and --tls-key, or dask's "
                       "configuration (DASK_DISTRIBUTED__COMM__TLS__CA_FILE, "
                       "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT, "
                       "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY)\n")  # fmt: skip
        # nor does plain tcp:// reach it
        with dask.config.set({"distributed.comm.timeouts.connect": "3s"}):
            assert main([*argv[:-1], address.replace("tls://", "tcp://"), "--set", "grid.seed=[2]"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"bnstudy: error: --scheduler {address.replace('tls://', 'tcp://')}: cannot connect")
        assert err.count("\n") == 1
    assert sorted(store.state(c.run_id) for c in load_study(spec, ["grid.seed=[0, 1]"]).runs()) == ["complete"] * 2
    assert not store.json_path(load_study(spec, ["grid.seed=[2]"]).runs()[0].run_id).exists()


@pytest.mark.parametrize("flags, message", [
    (["--scheduler", "tcp://127.0.0.1:1", "--tls-cert", "{dir}/cert.pem"],
     "--tls-ca-file, --tls-cert and --tls-key are for a tls:// scheduler (got --scheduler tcp://127.0.0.1:1)"),
    (["--scheduler", "tls://127.0.0.1:1", "--tls-cert", "{dir}/cert.pem"],
     "--scheduler tls://127.0.0.1:1: --tls-cert needs --tls-ca-file (the cluster's CA certificate) beside it"),
    (["--scheduler", "tls://127.0.0.1:1", "--tls-ca-file", "{dir}/ca.pem"],
     "--scheduler tls://127.0.0.1:1: --tls-ca-file needs --tls-cert (this client's certificate) beside it"),
    (["--scheduler", "tls://127.0.0.1:1", "--tls-ca-file", "{dir}/ca.pem", "--tls-cert", "{dir}/missing.pem"],
     "--tls-cert {dir}/missing.pem: cannot read it (No such file or directory)"),
])  # fmt: skip
def test_tls_flags_that_cannot_work_are_one_line_before_anything_connects(tmp_path, capsys, flags, message):
    spec, out = tmp_path / "tiny.toml", tmp_path / "out"
    spec.write_text(SPEC)
    (tmp_path / "ca.pem").write_text("a CA\n")
    (tmp_path / "cert.pem").write_text("a certificate\n")
    flags = [flag.format(dir=tmp_path) for flag in flags]
    for dry in ([], ["--dry-run"]):
        assert main(["sweep", str(spec), "--out", str(out), "--backend", "dask", *flags, *dry]) == 2
        assert capsys.readouterr().err == f"bnstudy: error: {message.format(dir=tmp_path)}\n"
    assert not out.exists()


def test_tls_flags_without_the_dask_backend_are_one_line(tmp_path, capsys):
    spec = tmp_path / "tiny.toml"
    spec.write_text(SPEC)
    assert main(["sweep", str(spec), "--out", str(tmp_path / "out"), "--dry-run", "--tls-cert", str(spec)]) == 2
    assert capsys.readouterr().err == ("bnstudy: error: --tls-ca-file, --tls-cert and --tls-key are for --backend "
                                       "dask with a tls:// scheduler\n")  # fmt: skip
