"""scripts/k8s-e2e.sh: the DaemonSet under a real kubelet (one-node Kubernetes on this machine).

The run itself is opt-in (OSSENSOR_K8S_E2E=1): cold, it builds Kubernetes (~7 min on 2 cores) before a run of a
few minutes. Its fast parts run always: the script's shell syntax, shellcheck when installed, and the e2e overlay
changing only what must differ on that cluster (tests/test_deploy.py validates it like every overlay)."""
import os
import shutil
import subprocess

import pytest

from support import ROOT
from test_deploy import daemonset, env_of, render, sensor_container

SCRIPTS = [ROOT / "scripts" / "k8s-e2e.sh", ROOT / "scripts" / "k8s-e2e" / "build.sh"]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shell_syntax(script):
    r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr


@pytest.mark.skipif(not shutil.which("shellcheck"), reason="shellcheck not installed")
def test_shellcheck_clean():
    r = subprocess.run(["shellcheck", "-x", *map(str, SCRIPTS)], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stdout


def test_usage_error_is_one_line_and_status_2():
    r = subprocess.run(["bash", str(SCRIPTS[0]), "nonsense"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "usage:" in r.stderr, r.stderr


def test_e2e_overlay_changes_only_what_must_differ():
    base, e2e = render("base"), render("overlays/e2e")
    assert [(d["kind"], d["metadata"]["name"]) for d in base] == [(d["kind"], d["metadata"]["name"]) for d in e2e]
    b, e = daemonset(base)["spec"]["template"]["spec"], daemonset(e2e)["spec"]["template"]["spec"]
    for c in (e["initContainers"][0], sensor_container(e2e)):
        assert c["image"] == "localhost/ossensor:e2e" and c["imagePullPolicy"] == "Never"
    be, ee = env_of(sensor_container(base)), env_of(sensor_container(e2e))
    changed = {k for k in be if be[k] != ee.get(k)} | (set(ee) - set(be))
    # the pod interfaces are captured by the base itself (NETWORK_DEVICE_EXCLUDELIST=^lo$, dedup on)
    assert changed == {"VSENSOR_HOSTNAME", "VSENSOR_PORT", "OSSENSOR_TLS_CA_FILE"}
    assert ee["OSSENSOR_TLS_CA_FILE"]["value"].startswith(sensor_container(e2e)["volumeMounts"][0]["mountPath"] + "/")
    # the script's kubelet root: the seccomp profile lands where that kubelet looks for Localhost profiles
    script = SCRIPTS[0].read_text()
    assert "E=/var/lib/ossensor-e2e " in script and '--root-dir="$E/kubelet"' in script
    assert e["volumes"][3]["hostPath"]["path"] == "/var/lib/ossensor-e2e/kubelet/seccomp/ossensor"
    # everything else is the base's, securityContext, probes and resources included
    for k in ("securityContext", "livenessProbe", "readinessProbe", "resources", "volumeMounts"):
        assert sensor_container(e2e)[k] == sensor_container(base)[k], k
    assert {k: v for k, v in e.items() if k not in ("containers", "initContainers", "volumes")} == \
        {k: v for k, v in b.items() if k not in ("containers", "initContainers", "volumes")}


@pytest.mark.skipif(os.environ.get("OSSENSOR_K8S_E2E") != "1",
                    reason="opt-in: OSSENSOR_K8S_E2E=1 (builds Kubernetes once, ~7 min cold; a run takes minutes)")
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
@pytest.mark.timeout(3600)
def test_k8s_e2e_run():
    r = subprocess.run(["bash", str(SCRIPTS[0])], capture_output=True, text=True, timeout=3500, cwd=ROOT)
    print(r.stderr[-6000:])
    assert r.returncode == 0, r.stderr[-6000:]
    assert "all checks passed" in r.stderr
    assert "torn down" in r.stderr
    assert not os.path.exists("/run/netns/ossensor-e2e-node") and not os.path.exists("/var/lib/ossensor-e2e")
