"""deploy/k8s/, checked offline: every manifest against the Kubernetes OpenAPI schema (strict:
an unknown field is an error), then what the schema cannot see.

The semantics that matter: the pods run the node with arguments its own parser accepts (the
container's real shell script is run with /bin/sh, after Kubernetes' $(VAR) expansion, and the
argv and environment it would exec are parsed by `tidelog node`'s parser into a NodeConfig); the
probes ask the port the node serves its health service on; each node advertises its pod's name
under the headless Service, and its peers are the StatefulSet's own pods; the PDB and the
Services select exactly the pods. No cluster and no network: kubernetes-validate ships the schemas.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from tidelog.node.config import parse_address

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSIONS = ("1.27.0", "1.30.0")  # grpc probes are GA since 1.27
NAMESPACE = "tidelog-test"  # any namespace: the pods read theirs from the downward API
# Stands in for `exec tidelog node` in the pod's script: prints the argv and TIDELOG_* variables
# the node would get, one per line, and ends the shell as exec would.
PROBE = """probe_exec() {
  for a in "$@"; do printf 'ARG %s\\n' "$a"; done
  env | grep '^TIDELOG_' | sed 's/^/ENV /'
  exit 0
}
"""


@functools.cache
def documents() -> tuple[tuple[Path, dict[str, Any]], ...]:
    """Every manifest (parsed once; the tests that change one change a copy)."""
    found = []
    for path in sorted(K8S.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                found.append((path, document))
    return tuple(found)


def one(kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [d for _, d in documents()
               if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(matches) == 1, f"{kind} {name or ''}: {len(matches)} found"
    return matches[0]


def statefulset() -> dict[str, Any]:
    return one("StatefulSet")


def container() -> dict[str, Any]:
    (only,) = statefulset()["spec"]["template"]["spec"]["containers"]
    return only


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' expansion of command, args and env values: $(NAME) of a variable defined
    before, $$ a literal $, anything else (an unknown name, $((...))) left as it is."""
    def one_reference(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", one_reference, text)


def pod_environment(ordinal: int) -> dict[str, str]:
    """The container's environment in pod tidelog-<ordinal>: the ConfigMap (envFrom), then
    `env` in order, each value expanded against what came before."""
    configmap = one("ConfigMap", container()["envFrom"][0]["configMapRef"]["name"])
    env: dict[str, str] = dict(configmap["data"])
    fields = {"metadata.name": f"{statefulset()['metadata']['name']}-{ordinal}",
              "metadata.namespace": NAMESPACE}
    for item in container()["env"]:
        if "valueFrom" in item:
            env[item["name"]] = fields[item["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            env[item["name"]] = expand(item["value"], env)
    return env


def exec_of(ordinal: int) -> tuple[list[str], dict[str, str]]:
    """Run the container's command with the real /bin/sh, `tidelog node` replaced by a probe
    that prints the argv and TIDELOG_* environment the node would get."""
    env = pod_environment(ordinal)
    command = [expand(part, env) for part in container()["command"]]
    args = [expand(part, env) for part in container().get("args", [])]
    assert command[:2] == ["/bin/sh", "-c"], command
    script = command[2]
    assert script.count("exec tidelog node ") == 2, script
    script = PROBE + script.replace("exec tidelog node ", "probe_exec ")
    result = subprocess.run(["/bin/sh", "-c", script, *command[3:], *args],
                            env={"PATH": "/usr/bin:/bin", **env}, capture_output=True,
                            text=True, timeout=30, check=True)
    argv = [line[4:] for line in result.stdout.splitlines() if line.startswith("ARG ")]
    seen = dict(line[4:].split("=", 1) for line in result.stdout.splitlines()
                if line.startswith("ENV "))
    return argv, seen


def node_parser() -> argparse.ArgumentParser:
    """`tidelog node`'s own parser (node/cli.py registers it), built after the environment is
    in place: its defaults are the TIDELOG_* variables."""
    from tidelog.node import cli as node_cli

    root = argparse.ArgumentParser(prog="tidelog")
    node_cli.register(root.add_subparsers(dest="command"))
    return root


def node_config(ordinal: int, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    from tidelog.node.main import config_from_args

    argv, env = exec_of(ordinal)
    for name in [n for n in os.environ if n.startswith("TIDELOG_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    args = node_parser().parse_args(["node", *argv])
    joins = bool(getattr(args, "join", ""))
    return args, config_from_args(args) if args.peers or joins else None


def headless_name(ordinal: int) -> str:
    service = statefulset()["spec"]["serviceName"]
    return f"{statefulset()['metadata']['name']}-{ordinal}.{service}.{NAMESPACE}.svc"


# ------------------------------------------------------------------------------------- tests

@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_is_valid_kubernetes(version: str) -> None:
    checked = 0
    for path, document in documents():
        if document["kind"] == "Kustomization":
            continue
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{path.name}: {document['kind']} is not valid Kubernetes {version}: "
                        f"{exc.message} at {list(exc.path)}")
        checked += 1
    assert checked >= 6


def test_the_validator_rejects_a_broken_manifest() -> None:
    """Not vacuous: a misspelt field and a wrong type fail, offline."""
    broken = json.loads(json.dumps(statefulset()))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpcc"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)
    broken = json.loads(json.dumps(statefulset()))
    broken["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


def test_kustomization_lists_every_manifest_and_the_compose_image() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    files = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(kustomization["resources"]) == files
    # the image compose runs (deploy/docker-compose.yml: ${TIDELOG_IMAGE:-tidelog:local})
    compose = (ROOT / "deploy" / "docker-compose.yml").read_text()
    assert "image: ${TIDELOG_IMAGE:-tidelog:local}" in compose
    assert container()["image"] == "tidelog:local"
    (image,) = kustomization["images"]
    assert (image["name"], image["newTag"]) == ("tidelog", "local")


@pytest.mark.parametrize("ordinal", [0, 1, 2])
def test_initial_pods_start_a_node_its_parser_accepts(
        ordinal: int, monkeypatch: pytest.MonkeyPatch) -> None:
    args, config = node_config(ordinal, monkeypatch)
    sts = statefulset()
    assert config.node_id == ordinal + 1
    # advertised: the pod's own DNS name under the headless Service
    assert config.advertise == f"{headless_name(ordinal)}:9091"
    # peers: the StatefulSet's initial pods, by the same names, one per replica
    assert config.peers == {i + 1: f"{headless_name(i)}:9091"
                            for i in range(sts["spec"]["replicas"])}
    ports = {p["name"]: p["containerPort"] for p in container()["ports"]}
    assert parse_address(config.listen)[1] == ports["grpc"]
    assert parse_address(config.peer_listen_address)[1] == ports["peer"]
    assert parse_address(config.metrics_listen)[1] == ports["metrics"]
    assert config.fsync == "always"
    # the data directory is the volume from the claim template
    (mount,) = container()["volumeMounts"]
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert mount["name"] == claim["metadata"]["name"]
    assert str(config.data_dir) == mount["mountPath"]


def test_a_pod_added_by_scaling_up_joins(monkeypatch: pytest.MonkeyPatch) -> None:
    """tidelog-3 (node 4) takes no --peers: it joins the initial pods and waits for
    `tidelog cluster add-node 4 --address <its advertised address>`."""
    argv, env = exec_of(3)
    assert argv[:2] == ["--id", "4"] and "--peers" not in argv
    assert env["TIDELOG_JOIN"].split(",") == [f"{headless_name(i)}:9091" for i in range(3)]
    assert env["TIDELOG_ADVERTISE"] == f"{headless_name(3)}:9091"
    args, config = node_config(3, monkeypatch)
    assert args.id == 4
    if hasattr(args, "join"):  # the node's --join (issue 17, membership) reads TIDELOG_JOIN
        assert args.join == env["TIDELOG_JOIN"]
        assert config.node_id == 4 and config.advertise == f"{headless_name(3)}:9091"
        assert list(config.join) == [f"{headless_name(i)}:9091" for i in range(3)]


def test_probes_ask_the_health_service_on_the_port_the_node_serves(
        monkeypatch: pytest.MonkeyPatch) -> None:
    _, config = node_config(0, monkeypatch)
    health_port = parse_address(config.listen)[1]  # node/server.py: Health on the client server
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = container()[kind]
        assert set(probe) & {"grpc", "httpGet", "exec", "tcpSocket"} == {"grpc"}, kind
        assert probe["grpc"]["port"] == health_port, kind
        # "" and "tidelog.v1.Broker" are the services the node sets SERVING (node/server.py)
        assert probe["grpc"].get("service", "") in ("", "tidelog.v1.Broker"), kind
    assert container()["readinessProbe"]["grpc"]["service"] == "tidelog.v1.Broker"


def test_services_and_pdb_select_exactly_the_pods() -> None:
    sts = statefulset()
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert sts["spec"]["selector"]["matchLabels"].items() <= labels.items()

    def selects(selector: dict[str, str]) -> bool:
        return bool(selector) and selector.items() <= labels.items()

    headless = one("Service", sts["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    assert selects(headless["spec"]["selector"])
    client = one("Service", "tidelog")
    assert selects(client["spec"]["selector"])
    ports = {p["name"]: p["containerPort"] for p in container()["ports"]}
    for service in (headless, client):
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports and ports[port["targetPort"]] == port["port"]
    pdb = one("PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert selects(pdb["spec"]["selector"]["matchLabels"])
    assert sts["spec"]["replicas"] == 3 and sts["spec"]["podManagementPolicy"] == "Parallel"
    requests = container()["resources"]["requests"]
    assert {"cpu", "memory"} <= set(requests)
