"""A local Kubernetes control plane made of the real programs, for the eks profile's tests.

No cloud is reachable, so the eks profile is proven against etcd, kube-apiserver (RBAC, the default
admission plugins incl. ValidatingAdmissionPolicy, ServiceAccount tokens), kube-controller-manager,
kube-scheduler, kwok (fake nodes; pods run through kwok's Stages) and the JobSet controller with
its admission webhooks, all on 127.0.0.1 and free ports. scripts/build_control_plane.sh builds the
programs from the Go module proxy into .tools/controlplane/bin; the CRDs are read from the Go module
cache at the versions tools/controlplane/*/go.mod pin, never copied into the repo.

Authentication is a static token file (one identity per component; the admin is system:masters),
and ServiceAccount tokens come from the TokenRequest API, so a test can call the API server exactly
as a workload's ServiceAccount does (`sa_token`, `kubeconfig_for`).

    with ControlPlane(tmp_path) as cp:
        cp.add_node("gpu-1", labels={...}, taints=[...], capacity={"nvidia.com/gpu": "8"})
        subprocess.run([kubectl, "--kubeconfig", str(cp.kubeconfig), ...])
"""

from __future__ import annotations

import base64
import datetime
import functools
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
import weakref
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
TOOLS = REPO_ROOT / "tools" / "controlplane"  # the Go modules that pin every program and CRD
BIN = Path(os.environ.get("LLMOPS_CONTROLPLANE_BIN", REPO_ROOT / ".tools" / "controlplane" / "bin"))
BUILD_SCRIPT = REPO_ROOT / "scripts" / "build_control_plane.sh"

# Nodes kwok manages carry this annotation (kwok runs with --manage-all-nodes=false).
KWOK_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")

# (Go module dir under tools/controlplane, module path, CRD files inside the module). The versions
# are the ones the go.mod files pin: Karpenter v1.14.1 (the AWS provider's NodePool/NodeClaim/
# EC2NodeClass), Gateway API v1.6.1 standard, Prometheus Operator v0.93.0, JobSet v0.12.0 and kwok's
# Stage CRD (what the kwok controller reads its pod and node lifecycles from). The files that the
# schema tests read from ../shared/crds are byte-identical (test_control_plane.py checks it).
CRDS = [
    ("jobset", "sigs.k8s.io/jobset", ["config/components/crd/bases/jobset.x-k8s.io_jobsets.yaml"]),
    ("kwok", "sigs.k8s.io/kwok", ["kustomize/crd/bases/kwok.x-k8s.io_stages.yaml"]),
    ("crds", "github.com/aws/karpenter-provider-aws", [
        "pkg/apis/crds/karpenter.sh_nodepools.yaml",
        "pkg/apis/crds/karpenter.sh_nodeclaims.yaml",
        "pkg/apis/crds/karpenter.k8s.aws_ec2nodeclasses.yaml",
    ]),
    ("crds", "sigs.k8s.io/gateway-api", [
        "config/crd/standard/gateway.networking.k8s.io_gatewayclasses.yaml",
        "config/crd/standard/gateway.networking.k8s.io_gateways.yaml",
        "config/crd/standard/gateway.networking.k8s.io_httproutes.yaml",
        "config/crd/standard/gateway.networking.k8s.io_referencegrants.yaml",
    ]),
    ("crds", "github.com/prometheus-operator/prometheus-operator", [
        "example/prometheus-operator-crd/monitoring.coreos.com_podmonitors.yaml",
        "example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml",
        "example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml",
    ]),
]
# kwok's default lifecycle (what kwok uses when given no Stages: node-initialize, node heartbeat
# with a Lease, pod ready/complete/delete), plus its opt-in chaos stages: a pod labelled
# `pod-container-running-failed.stage.kwok.x-k8s.io: "true"` fails, with the exit code its
# `.../exit-code` annotation names. Kustomize directories or files inside the kwok module.
KWOK_STAGES = ["kustomize/stage/fast", "kustomize/stage/pod/chaos/pod-container-running-failed.yaml",
               "kustomize/stage/pod/chaos/pod-init-container-running-failed.yaml"]


class ControlPlaneError(RuntimeError):
    pass


def find_kubectl() -> str:
    """kubectl as tests/k8s_schemas.py finds it: KUBECTL, then .tools/bin (make install), then PATH."""
    for candidate in (os.environ.get("KUBECTL"), REPO_ROOT / ".tools" / "bin" / "kubectl", shutil.which("kubectl")):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    raise ControlPlaneError("no kubectl: run `make install` (scripts/install_kubectl.py)")


def build() -> None:
    """Build (or find up to date) the programs; cheap when nothing changed."""
    out = subprocess.run(["bash", str(BUILD_SCRIPT)], capture_output=True, text=True)
    if out.returncode:
        raise ControlPlaneError(f"{BUILD_SCRIPT.name} failed:\n{out.stdout}{out.stderr}")


@functools.cache
def module_dir(tools_module: str, module: str) -> Path:
    """Where the module cache holds `module` at the version tools/controlplane/<tools_module> pins.

    `go mod download` fetches it first if needed, checking it against that module's go.sum."""
    if shutil.which("go") is None:
        raise ControlPlaneError("the CRDs are read from Go modules: `go` must be on PATH")
    out = subprocess.run(
        ["go", "mod", "download", "-json", module],
        cwd=TOOLS / tools_module, capture_output=True, text=True, timeout=600,
    )
    info = json.loads(out.stdout or "{}")
    if out.returncode or "Dir" not in info:
        raise ControlPlaneError(f"go mod download {module} failed: {info.get('Error') or out.stderr}")
    return Path(info["Dir"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- certificates and keys (generated per control plane, EC P-256: instant to make) ----

def _write_key(path: Path, key) -> None:
    from cryptography.hazmat.primitives import serialization

    path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    path.chmod(0o600)


def _make_pki(pki: Path) -> None:
    """A CA, a serving cert for 127.0.0.1 (API server, JobSet webhooks), the ServiceAccount key pair."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    pki.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    validity = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=7))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "llmops-test-ca")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(validity[0]).not_valid_after(validity[1])
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    (pki / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))

    key = ec.generate_private_key(ec.SECP256R1())
    names = ["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
             "kubernetes.default.svc.cluster.local"]
    serving = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
               .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(validity[0]).not_valid_after(validity[1])
               .add_extension(x509.SubjectAlternativeName(
                   [x509.DNSName(n) for n in names] + [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                   critical=False)
               .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
               .sign(ca_key, hashes.SHA256()))
    (pki / "tls.crt").write_bytes(serving.public_bytes(serialization.Encoding.PEM))
    _write_key(pki / "tls.key", key)

    sa_key = ec.generate_private_key(ec.SECP256R1())
    _write_key(pki / "sa.key", sa_key)
    (pki / "sa.pub").write_bytes(sa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))


@dataclass
class _Proc:
    name: str
    popen: subprocess.Popen
    log: Path


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL it if the test process dies (even by SIGKILL)."""
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _kill_all(procs: list[_Proc]) -> None:
    """Stop each process group, newest first (controllers, then the API server, then etcd, so
    nothing shuts down against a dead backend): SIGTERM, then SIGKILL after 10 s. Idempotent."""
    for p in reversed(procs):
        for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, None)):
            try:
                os.killpg(p.popen.pid, sig)
            except ProcessLookupError:
                break
            try:
                p.popen.wait(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                continue
    procs.clear()


class ControlPlane:
    """etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok and JobSet, under `root`.

    `root` holds everything: pki/, etcd/, logs/<program>.log, kubeconfig (admin), kubeconfigs/.
    Call `build()` first (or let the pytest fixture do it)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.kubeconfig = self.root / "kubeconfig"
        self.logs = self.root / "logs"
        self.pki = self.root / "pki"
        self.ports = {name: free_port() for name in (
            "etcd", "etcd-peer", "apiserver", "controller-manager", "scheduler", "kwok", "jobset-webhook",
            "jobset-health")}
        self.server = f"https://127.0.0.1:{self.ports['apiserver']}"
        # One static token per identity. The controller-manager and scheduler get their own users,
        # which the API server's bootstrap RBAC binds to their roles, as in a real cluster.
        self.tokens = {who: secrets.token_hex(16) for who in (
            "admin", "kube-controller-manager", "kube-scheduler", "kwok", "jobset")}
        self._procs: list[_Proc] = []
        self._api_client = None
        self.applied: subprocess.CompletedProcess | None = None  # apply_project()'s kubectl output
        # Nothing may outlive the test session: a finalizer also runs at interpreter exit, and
        # _die_with_parent covers a test process that is killed outright.
        self._finalizer = weakref.finalize(self, _kill_all, self._procs)

    # ---- lifecycle ----

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, timeout: float = 120) -> None:
        """Start everything and return once the cluster is usable: the API server is ready, the CRDs
        are established, kwok's stages exist, JobSet's webhooks answer, and the controller-manager
        has made the `default` ServiceAccount."""
        for program in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok",
                        "jobset-controller"):
            if not (BIN / program).is_file():
                raise ControlPlaneError(f"{BIN / program} is missing: run scripts/build_control_plane.sh")
        deadline = time.monotonic() + timeout
        self.logs.mkdir(parents=True, exist_ok=True)
        if not (self.pki / "ca.crt").exists():
            _make_pki(self.pki)
        self._write_auth_files()
        try:
            self._start_etcd()
            self._start_apiserver()
            self._wait_http(f"{self.server}/readyz", "kube-apiserver", deadline)
            self._start_kube_controllers()  # they need no CRD: start them before the CRDs go in
            self._apply_crds(deadline)
            self._start_addons()  # kwok and JobSet watch their CRDs from the start
            self._apply_kwok_stages()
            self._wait_http(f"https://127.0.0.1:{self.ports['controller-manager']}/healthz",
                            "kube-controller-manager", deadline, verify=False)
            self._wait_http(f"https://127.0.0.1:{self.ports['scheduler']}/healthz", "kube-scheduler",
                            deadline, verify=False)
            self._wait_http(f"http://127.0.0.1:{self.ports['kwok']}/healthz", "kwok", deadline)
            self._wait_http(f"http://127.0.0.1:{self.ports['jobset-health']}/readyz", "jobset-controller",
                            deadline)
            self._register_jobset_webhooks()
            self._wait_default_service_account(deadline)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop every process this control plane started (each one's whole process group)."""
        _kill_all(self._procs)
        if self._api_client is not None:
            self._api_client.close()
            self._api_client = None

    # ---- what tests use ----

    @property
    def api_client(self):
        """A kubernetes.client.ApiClient for the admin (system:masters)."""
        if self._api_client is None:
            from kubernetes import config

            self._api_client = config.new_client_from_config(config_file=str(self.kubeconfig))
        return self._api_client

    def kubectl(self, *args: str, kubeconfig: Path | None = None, input: str | None = None,
                check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run kubectl against this control plane (as the admin unless `kubeconfig` says otherwise)."""
        argv = [find_kubectl(), "--kubeconfig", str(kubeconfig or self.kubeconfig), *args]
        out = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout)
        if check and out.returncode:
            raise ControlPlaneError(f"kubectl {' '.join(args)} failed ({out.returncode}):\n{out.stderr}")
        return out

    def apply_project(self) -> None:
        """`kubectl kustomize k8s/ | kubectl apply --server-side -f -`, then one kwok node per NodePool,
        shaped like its first instance type (labels, taints, GPUs, EFA), as Karpenter would launch it."""
        from include.cluster.pools import CAPACITY_TYPE_LABEL, EFA, GPU, INSTANCE_TYPE_LABEL, get_pools

        rendered = subprocess.run([find_kubectl(), "kustomize", str(REPO_ROOT / "k8s")], capture_output=True,
                                  text=True, timeout=120, check=True).stdout
        self.applied = self.kubectl("apply", "--server-side", "-f", "-", input=rendered, timeout=300)
        for pool in get_pools().values():
            itype = pool.instances()[0]
            capacity = {"cpu": str(itype.vcpu), "memory": f"{itype.memory_gib}Gi"}
            if itype.gpus:
                capacity[GPU] = str(itype.gpus)
            if itype.efa_interfaces:
                capacity[EFA] = str(itype.efa_interfaces)
            self.add_node(f"{pool.name}-node-0", taints=[t.__dict__ for t in pool.taints], capacity=capacity,
                          labels={**pool.labels, **pool.node_selector, INSTANCE_TYPE_LABEL: itype.name,
                                  CAPACITY_TYPE_LABEL: pool.capacity_types[0]})
        self._wait_rbac("system:serviceaccount:airflow:airflow-worker", "list", "pods", "llm-training")

    def _wait_rbac(self, user: str, verb: str, resource: str, namespace: str, timeout: float = 30) -> None:
        """The authorizer learns new RoleBindings through an informer: wait until it grants one of them."""
        from kubernetes import client

        review = client.V1SubjectAccessReview(spec=client.V1SubjectAccessReviewSpec(
            user=user, resource_attributes=client.V1ResourceAttributes(verb=verb, resource=resource,
                                                                       namespace=namespace)))
        deadline = time.monotonic() + timeout
        api = client.AuthorizationV1Api(self.api_client)
        while not api.create_subject_access_review(review).status.allowed:
            if time.monotonic() > deadline:
                raise ControlPlaneError(f"RBAC never granted {user} {verb} {resource} in {namespace}")
            time.sleep(0.2)

    def sa_token(self, namespace: str, name: str, expiration_seconds: int = 3600) -> str:
        """A bound token for ServiceAccount namespace/name from the TokenRequest API, what a pod gets."""
        from kubernetes import client

        body = client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=expiration_seconds))
        resp = client.CoreV1Api(self.api_client).create_namespaced_service_account_token(name, namespace, body)
        return resp.status.token

    def kubeconfig_for(self, namespace: str, sa: str) -> Path:
        """A kubeconfig that authenticates as ServiceAccount namespace/sa (default namespace: namespace)."""
        path = self.root / "kubeconfigs" / f"sa-{namespace}-{sa}.kubeconfig"
        self._write_kubeconfig(path, f"system:serviceaccount:{namespace}:{sa}", self.sa_token(namespace, sa),
                               namespace=namespace)
        return path

    def add_node(self, name: str, labels: dict[str, str] | None = None, taints: list[dict] | None = None,
                 capacity: dict[str, str] | None = None, wait: float = 60) -> dict:
        """Create a kwok-managed fake node and wait until kwok reports it Ready.

        `taints` are Node taints ({"key", "value", "effect"}); `capacity` adds to or overrides the
        defaults (32 CPUs, 256Gi, 110 pods), e.g. {"nvidia.com/gpu": "8"}; allocatable = capacity."""
        from kubernetes import client

        resources = {"cpu": "32", "memory": "256Gi", "pods": "110", **(capacity or {})}
        node = {
            "apiVersion": "v1", "kind": "Node",
            "metadata": {
                "name": name,
                "annotations": {KWOK_NODE_ANNOTATION[0]: KWOK_NODE_ANNOTATION[1]},
                "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                           "kubernetes.io/arch": "amd64", "type": "kwok", **(labels or {})},
            },
            "spec": {"taints": taints or []},
            "status": {"capacity": resources, "allocatable": resources},  # Node create keeps status
        }
        core = client.CoreV1Api(self.api_client)
        core.create_node(node)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            got = core.read_node(name)
            if any(c.type == "Ready" and c.status == "True" for c in got.status.conditions or []):
                return self.api_client.sanitize_for_serialization(got)
            time.sleep(0.2)
        raise ControlPlaneError(f"node {name} not Ready after {wait}s (see {self.logs / 'kwok.log'})")

    # ---- internals ----

    def _write_auth_files(self) -> None:
        groups = {"admin": "system:masters", "kwok": "system:masters", "jobset": "system:masters"}
        users = {"kube-controller-manager": "system:kube-controller-manager", "kube-scheduler": "system:kube-scheduler"}
        lines = []
        for who, token in self.tokens.items():
            user = users.get(who, who)
            line = f"{token},{user},{user}"
            if who in groups:
                line += f',"{groups[who]}"'
            lines.append(line)
        tokens = self.pki / "tokens.csv"
        tokens.write_text("\n".join(lines) + "\n")
        tokens.chmod(0o600)
        self._write_kubeconfig(self.kubeconfig, "admin", self.tokens["admin"])
        for who in ("kube-controller-manager", "kube-scheduler", "kwok", "jobset"):
            self._write_kubeconfig(self.root / "kubeconfigs" / f"{who}.kubeconfig", who, self.tokens[who])

    def _write_kubeconfig(self, path: Path, user: str, token: str, namespace: str = "default") -> None:
        ca = base64.b64encode((self.pki / "ca.crt").read_bytes()).decode()
        doc = {
            "apiVersion": "v1", "kind": "Config", "current-context": "llmops-test",
            "clusters": [{"name": "llmops-test", "cluster": {"server": self.server, "certificate-authority-data": ca}}],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": "llmops-test", "context": {"cluster": "llmops-test", "user": user,
                                                             "namespace": namespace}}],
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        path.chmod(0o600)

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = self.logs / f"{name}.log"
        with open(log, "ab") as f:
            popen = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT, cwd=self.root,
                start_new_session=True,  # its own process group, so stop() reaches its children too
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        self._procs.append(_Proc(name, popen, log))

    def _start_etcd(self) -> None:
        client_url = f"http://127.0.0.1:{self.ports['etcd']}"
        peer_url = f"http://127.0.0.1:{self.ports['etcd-peer']}"
        self._spawn("etcd", [
            str(BIN / "etcd"), "--name=default", f"--data-dir={self.root / 'etcd'}",
            f"--listen-client-urls={client_url}", f"--advertise-client-urls={client_url}",
            f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=default={peer_url}",
            "--unsafe-no-fsync",  # test data: durability is not worth the disk latency
            "--log-level=warn",
        ])

    def _start_apiserver(self) -> None:
        pki = self.pki
        self._spawn("kube-apiserver", [
            str(BIN / "kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{self.ports['etcd']}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            f"--secure-port={self.ports['apiserver']}",
            f"--tls-cert-file={pki / 'tls.crt'}", f"--tls-private-key-file={pki / 'tls.key'}",
            f"--token-auth-file={pki / 'tokens.csv'}",
            "--authorization-mode=Node,RBAC",
            # The default admission plugins (ServiceAccount, PodSecurity, ValidatingAdmissionPolicy,
            # the webhooks, ...) stay on; NodeRestriction is what EKS adds.
            "--enable-admission-plugins=NodeRestriction",
            "--allow-privileged=true",  # as on EKS: the device-plugin DaemonSets may ask for it
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--service-cluster-ip-range=10.96.0.0/16",
            # The `kubernetes` Service's Endpoints may not hold a loopback address: without this the
            # reconciler logs a validation error every 10 s. Nothing here routes to that Service.
            "--endpoint-reconciler-type=none",
            f"--cert-dir={pki / 'apiserver'}",
            "--profiling=false",
        ])

    def _start_kube_controllers(self) -> None:
        kubeconfigs = self.root / "kubeconfigs"
        self._spawn("kube-controller-manager", [
            str(BIN / "kube-controller-manager"),
            f"--kubeconfig={kubeconfigs / 'kube-controller-manager.kubeconfig'}",
            "--controllers=*", "--leader-elect=false",
            "--use-service-account-credentials=true",  # each controller as its own ServiceAccount
            f"--service-account-private-key-file={self.pki / 'sa.key'}",  # the tokens controller
            f"--root-ca-file={self.pki / 'ca.crt'}",  # kube-root-ca.crt in every namespace
            "--bind-address=127.0.0.1", f"--secure-port={self.ports['controller-manager']}",
            f"--cert-dir={self.pki / 'controller-manager'}",
            "--profiling=false",
        ])
        self._spawn("kube-scheduler", [
            str(BIN / "kube-scheduler"),
            f"--kubeconfig={kubeconfigs / 'kube-scheduler.kubeconfig'}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1", f"--secure-port={self.ports['scheduler']}",
            f"--cert-dir={self.pki / 'scheduler'}",
            "--profiling=false",
        ])

    def _start_addons(self) -> None:
        kubeconfigs = self.root / "kubeconfigs"
        kwok_config = self.root / "kwok.yaml"  # empty: never read ~/.kwok/kwok.yaml
        kwok_config.write_text("")
        self._spawn("kwok", [
            str(BIN / "kwok"),
            f"--kubeconfig={kubeconfigs / 'kwok.kubeconfig'}",
            f"--config={kwok_config}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION[0]}={KWOK_NODE_ANNOTATION[1]}",
            "--enable-crds=Stage",  # lifecycles from the Stage objects applied below
            f"--server-address=127.0.0.1:{self.ports['kwok']}",
            "--node-ip=127.0.0.1",
            "--node-lease-duration-seconds=40",  # node Leases, so the node lifecycle controller sees it alive
        ])
        # JobSet's own config: no leader election, and no in-cluster cert rotation (it would put the
        # certs in a Secret for a Service that cannot route here); its webhooks serve our cert on
        # 127.0.0.1 and are registered by URL (_register_jobset_webhooks).
        certs = self.pki / "jobset-webhook"
        certs.mkdir(exist_ok=True)
        shutil.copyfile(self.pki / "tls.crt", certs / "tls.crt")
        shutil.copyfile(self.pki / "tls.key", certs / "tls.key")
        config = self.root / "jobset-config.yaml"
        config.write_text(yaml.safe_dump({
            "apiVersion": "config.jobset.x-k8s.io/v1alpha1", "kind": "Configuration",
            "leaderElection": {"leaderElect": False},
            "internalCertManagement": {"enable": False},
            "webhook": {"host": "127.0.0.1", "port": self.ports["jobset-webhook"], "certDir": str(certs)},
            "health": {"healthProbeBindAddress": f"127.0.0.1:{self.ports['jobset-health']}"},
            "metrics": {"bindAddress": "0"},  # off
        }))
        self._spawn("jobset-controller", [
            str(BIN / "jobset-controller"),
            f"--kubeconfig={kubeconfigs / 'jobset.kubeconfig'}",
            f"--config={config}",
            "--zap-devel=false",
        ])

    def _apply(self, manifests: str) -> None:
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=manifests)

    def _apply_crds(self, deadline: float) -> None:
        docs = []
        for tools_module, module, files in CRDS:
            root = module_dir(tools_module, module)
            docs += [(root / f).read_text() for f in files]
        self._apply("\n---\n".join(docs))
        remaining = max(1, int(deadline - time.monotonic()))
        self.kubectl("wait", "--for=condition=Established", "crd", "--all", f"--timeout={remaining}s")

    def _apply_kwok_stages(self) -> None:
        kwok = module_dir("kwok", "sigs.k8s.io/kwok")
        docs = [(kwok / p).read_text() if p.endswith(".yaml") else self.kubectl("kustomize", str(kwok / p)).stdout
                for p in KWOK_STAGES]
        self._apply("\n---\n".join(docs))

    def _register_jobset_webhooks(self) -> None:
        """JobSet's webhook configurations from its module (kustomize applies its objectSelector
        patches), pointed at the controller on 127.0.0.1 instead of an in-cluster Service."""
        jobset = module_dir("jobset", "sigs.k8s.io/jobset")
        rendered = self.kubectl("kustomize", str(jobset / "config/components/webhook")).stdout
        ca = base64.b64encode((self.pki / "ca.crt").read_bytes()).decode()
        out = []
        for doc in yaml.safe_load_all(rendered):
            if not doc or not doc["kind"].endswith("WebhookConfiguration"):
                continue  # the Service: nothing routes to it here
            doc["metadata"]["name"] = "jobset-" + doc["metadata"]["name"]  # as config/default names it
            for hook in doc["webhooks"]:
                path = hook["clientConfig"]["service"]["path"]
                hook["clientConfig"] = {"url": f"https://127.0.0.1:{self.ports['jobset-webhook']}{path}",
                                        "caBundle": ca}
            out.append(yaml.safe_dump(doc))
        self._apply("\n---\n".join(out))

    def _wait_http(self, url: str, what: str, deadline: float, verify: bool = True) -> None:
        """Poll `url` until it answers 200; fail early, with the log's tail, if the process died."""
        context = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        if not verify:  # the component's self-signed serving cert: a loopback readiness probe only
            context = ssl._create_unverified_context()
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {self.tokens['admin']}"})
        last = ""
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                with urllib.request.urlopen(request, timeout=5, context=context) as resp:
                    if resp.status == 200:
                        return
            except Exception as e:  # noqa: BLE001 - not up yet
                last = str(e)
            time.sleep(0.25)
        raise ControlPlaneError(f"{what} not ready at {url}: {last}\n{self._tails()}")

    def _wait_default_service_account(self, deadline: float) -> None:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        core = client.CoreV1Api(self.api_client)
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                core.read_namespaced_service_account("default", "default")
                return
            except ApiException as e:
                if e.status != 404:
                    raise
            time.sleep(0.25)
        raise ControlPlaneError(f"no default ServiceAccount: is kube-controller-manager working?\n{self._tails()}")

    def _check_alive(self) -> None:
        for p in self._procs:
            if p.popen.poll() is not None:
                raise ControlPlaneError(f"{p.name} exited with {p.popen.returncode}:\n{self._tail(p.log)}")

    @staticmethod
    def _tail(log: Path, lines: int = 30) -> str:
        try:
            return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _tails(self) -> str:
        return "\n".join(f"--- {p.log}\n{self._tail(p.log, 10)}" for p in self._procs)
