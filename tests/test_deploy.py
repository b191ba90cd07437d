"""The manifests in daemonset/: valid against the Kubernetes schemas (kubernetes-validate, strict),
clean under checkov's Kubernetes checks (every skip carries its reason), least privilege as documented,
and the plain file and the kustomize base describe the same objects.

kubernetes-validate and checkov live in their own virtualenv (scripts/setup.sh makes it:
checkov pins versions that would fight the sensor's own dependencies).
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from support import ROOT

DS = ROOT / "daemonset"
TOOLS = Path(os.environ.get("OSSENSOR_DEPLOY_TOOLS", "/opt/ossensor-deploy-tools")) / "bin"
OVERLAYS = sorted(p.parent.name for p in (DS / "overlays").glob("*/kustomization.yaml"))
MANIFESTS = ["ossensor-daemonset.yaml", "base"] + [f"overlays/{o}" for o in OVERLAYS]
pytestmark = pytest.mark.timeout(180)


# -- a small kustomize: resources + inline JSON 6902 patches, all our overlays use --------------
def _pointer(path: str) -> list:
    return [p.replace("~1", "/").replace("~0", "~") for p in path.lstrip("/").split("/")]


def _json_patch(doc: dict, ops: list[dict]) -> None:
    for op in ops:
        *parents, last = _pointer(op["path"])
        node = doc
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        key = (len(node) if last == "-" else int(last)) if isinstance(node, list) else last
        if op["op"] == "test":
            assert node[key] == op["value"], f"patch test failed at {op['path']}"
        elif op["op"] == "remove":
            del node[key]
        elif op["op"] == "replace":
            node[key] = op["value"]
        elif op["op"] == "add":
            node.insert(key, op["value"]) if isinstance(node, list) else node.__setitem__(key, op["value"])
        else:
            raise AssertionError(f"unsupported op {op['op']}")


def render(target: str) -> list[dict]:
    path = DS / target
    if path.is_file():
        return [d for d in yaml.safe_load_all(path.read_text()) if d]
    k = yaml.safe_load((path / "kustomization.yaml").read_text())
    docs: list[dict] = []
    for res in k.get("resources", []):
        docs += render(str((path / res).resolve().relative_to(DS)))
    for patch in k.get("patches", []):
        t = patch["target"]
        for d in docs:
            if d["kind"] == t["kind"] and d["metadata"]["name"] == t["name"]:
                _json_patch(d, yaml.safe_load(patch["patch"]))
    return docs


def rendered_file(target: str, tmp_path: Path) -> Path:
    out = tmp_path / (target.replace("/", "_") + ".yaml")
    out.write_text(yaml.safe_dump_all(render(target), sort_keys=False))
    return out


def daemonset(docs: list[dict]) -> dict:
    return next(d for d in docs if d["kind"] == "DaemonSet")


def sensor_container(docs: list[dict]) -> dict:
    return next(c for c in daemonset(docs)["spec"]["template"]["spec"]["containers"] if c["name"] == "ossensor")


def env_of(container: dict) -> dict:
    return {e["name"]: e for e in container.get("env", [])}


def tool(name: str) -> str:
    path = TOOLS / name
    assert path.exists(), f"{path} missing: run scripts/setup.sh (it installs the deploy tools)"
    return str(path)


# -- tests ------------------------------------------------------------------------------------
def test_plain_file_and_kustomize_base_are_the_same_objects():
    assert render("ossensor-daemonset.yaml") == render("base")


@pytest.mark.skipif(not shutil.which("kubectl"), reason="kubectl (kustomize) not installed")
@pytest.mark.parametrize("target", ["base"] + [f"overlays/{o}" for o in OVERLAYS])
def test_our_rendering_matches_kubectl_kustomize(target):
    r = subprocess.run(["kubectl", "kustomize", str(DS / target)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    key = lambda d: (d["kind"], d["metadata"]["name"])  # noqa: E731
    assert sorted(yaml.safe_load_all(r.stdout), key=key) == sorted(render(target), key=key)


@pytest.mark.parametrize("target", MANIFESTS)
def test_validates_against_kubernetes_schemas(target, tmp_path):
    f = rendered_file(target, tmp_path)
    r = subprocess.run([tool("kubernetes-validate"), "--strict", str(f)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    kinds = {d["kind"] for d in render(target)}
    assert r.stdout.count("passed for resource") == len(render(target)), r.stdout
    assert "DaemonSet" in kinds


@pytest.mark.parametrize("target", MANIFESTS)
def test_checkov_kubernetes_checks_pass_and_every_skip_has_a_reason(target, tmp_path):
    f = rendered_file(target, tmp_path)
    r = subprocess.run([tool("checkov"), "-f", str(f), "--framework", "kubernetes", "-o", "json",
                        "--skip-download"], capture_output=True, text=True, timeout=150)
    report = json.loads(r.stdout)
    reports = report if isinstance(report, list) else [report]
    failed = [(c["check_id"], c["resource"]) for rep in reports for c in rep["results"]["failed_checks"]]
    assert failed == [], failed
    passed = sum(len(rep["results"]["passed_checks"]) for rep in reports)
    assert passed > 50, "checkov ran almost no check"
    skipped = [c for rep in reports for c in rep["results"]["skipped_checks"]]
    for c in skipped:
        assert len((c.get("check_result") or {}).get("suppress_comment", "")) >= 20, c["check_id"]
    ds = daemonset(render(target))
    for k, v in ds["metadata"].get("annotations", {}).items():
        if k.startswith("checkov.io/skip"):
            assert re.fullmatch(r"CKV2?_K8S_\d+=.{20,}", v), (k, v)
    if target != "ossensor-daemonset.yaml":
        return
    # in the plain file each skip also has a comment above it saying why
    lines = (DS / target).read_text().splitlines()
    for i, line in enumerate(lines):
        if "checkov.io/skip" in line:
            above = [l for l in lines[max(0, i - 3):i] if l.strip().startswith("#") or "checkov.io/skip" in l]
            assert above, f"no comment above: {line.strip()}"


@pytest.mark.parametrize("target", MANIFESTS)
def test_least_privilege_and_operations(target):
    docs = render(target)
    ds = daemonset(docs)
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert {"operator": "Exists"} in pod["tolerations"]
    pc = next(d for d in docs if d["kind"] == "PriorityClass")
    assert pod["priorityClassName"] == pc["metadata"]["name"]
    assert ds["spec"]["updateStrategy"]["type"] == "RollingUpdate"
    assert pod["automountServiceAccountToken"] is False
    from ossensor.config import Settings
    shutdown = Settings.model_fields["shutdown_timeout"].default
    assert pod["terminationGracePeriodSeconds"] > shutdown + 5
    c = sensor_container(docs)
    sc = c["securityContext"]
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["NET_RAW"]}
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc.get("privileged", False) is False
    assert sc["seccompProfile"] == {"type": "Localhost", "localhostProfile": "ossensor/ossensor-seccomp.json"}
    for k in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(c["resources"][k])
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    env = env_of(c)
    assert env["OSSENSOR_METRICS_PORT"]["value"] == str(c["ports"][0]["containerPort"])
    # writable volumes exactly where the sensor writes: the generated config and the spool
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    vols = {v["name"]: v for v in pod["volumes"]}
    for var in ("OSSENSOR_CONFIG_PATH", "OSSENSOR_SPOOL_DIR"):
        path = Path(env[var]["value"])
        mount = next(m for p, m in mounts.items() if path == Path(p) or Path(p) in path.parents)
        assert not mount.get("readOnly") and "emptyDir" in vols[mount["name"]], var
    # the key comes from a Secret, never a literal
    assert "value" not in env.get("VSENSOR_HMAC_KEY", {})
    if "VSENSOR_HMAC_KEY" in env:
        assert env["VSENSOR_HMAC_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "ossensor-hmac"
        assert "VSENSOR_HMAC_KEY_FILE" not in env
    else:
        kf = Path(env["VSENSOR_HMAC_KEY_FILE"]["value"])
        m = mounts[str(kf.parent)]
        assert m["readOnly"] and vols[m["name"]]["secret"]["secretName"] == "ossensor-hmac"
    # the init container that installs the profile is itself unprivileged
    init = pod["initContainers"][0]
    assert init["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert init["securityContext"]["allowPrivilegeEscalation"] is False
    assert init["command"][-1].endswith(Path(sc["seccompProfile"]["localhostProfile"]).name)


def test_overlays_do_what_they_say():
    assert set(OVERLAYS) >= {"key-from-env", "proxy", "networkpolicy"}
    env = env_of(sensor_container(render("overlays/proxy")))
    assert env["HTTPS_PROXY"]["value"].startswith("http://") and env["NO_PROXY"]["value"]
    env = env_of(sensor_container(render("overlays/key-from-env")))
    assert "VSENSOR_HMAC_KEY" in env and "VSENSOR_HMAC_KEY_FILE" not in env
    docs = render("overlays/networkpolicy")
    np = next(d for d in docs if d["kind"] == "NetworkPolicy")
    assert np["spec"]["podSelector"]["matchLabels"] == daemonset(docs)["spec"]["selector"]["matchLabels"]
    ports = sorted((p["protocol"], p["port"]) for rule in np["spec"]["egress"] for p in rule["ports"])
    assert ports == [("TCP", 53), ("TCP", 443), ("TCP", 3128), ("UDP", 53)]
    assert "checkov.io/skip6" not in daemonset(docs)["metadata"]["annotations"]


def test_seccomp_profile_is_an_allow_list():
    prof = json.loads((DS / "ossensor-seccomp.json").read_text())
    assert prof["defaultAction"] == "SCMP_ACT_ERRNO"
    allowed = {n for rule in prof["syscalls"] if rule["action"] == "SCMP_ACT_ALLOW" and not rule.get("args")
               for n in rule["names"]}
    # what the sensor does: capture, drop its capabilities, ship over TLS, exit
    assert {"setsockopt", "mmap", "poll", "capset", "prctl", "connect", "execve", "exit_group"} <= allowed
    # what a compromised sensor must not do
    for bad in ("ptrace", "mount", "umount2", "unshare", "setns", "bpf", "init_module", "finit_module",
                "kexec_load", "keyctl", "add_key", "perf_event_open", "process_vm_writev", "pivot_root",
                "chroot", "reboot", "swapon", "open_by_handle_at", "userfaultfd", "socket"):
        assert bad not in allowed, bad
    families = sorted(r["args"][0]["value"] for r in prof["syscalls"] if r["names"] == ["socket"])
    assert families == [1, 2, 10, 16, 17]  # unix, inet, inet6, netlink, packet
