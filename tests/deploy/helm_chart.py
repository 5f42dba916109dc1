#!/usr/bin/env python3
"""Chart test: lints helm/nixgate strictly, renders it with default and non-default values,
validates every manifest against the Kubernetes schemas, checks that the schema refuses bad
values, and runs the real binary with exactly the rendered args and ConfigMap to prove the
flags parse, the probe paths answer 200 and the `helm test` pod's script passes. The Grafana
dashboard's and the PrometheusRule's PromQL must use only metric names and label values the
running binary exposes on /metrics (the object-store families: those of the custom profile's
run with objectStore.url set, a bucket nobody listens at) and must parse with `promtool check
rules`. The chart README must be what
ci/gen_readme.py writes from values.yaml, with every value described; each optional hook
(ServiceAccount, extra volumes/mounts/containers, startup probe, trafficDistribution,
global.imageRegistry, DNS egress peers) renders when set and is absent by default.

Needs PyPI's helm-python-sdk (Helm v4 engine, offline), kubernetes-validate and Debian's
prometheus package (promtool); ci/test.sh installs them. Prints cargo-style totals for ci/test.sh.
"""
import glob
import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import yaml
import kubernetes_validate
from helm_python import chart as helm

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CHART = os.path.join(ROOT, "helm", "nixgate")
NIXGATE = os.path.join(ROOT, "target", "debug", "nixgate")
K8S_VERSION = "1.30"
passed = failed = 0


def check(name, cond, detail=""):
    global passed, failed
    if cond:
        passed += 1
        print(f"ok   - {name}")
    else:
        failed += 1
        print(f"FAIL - {name} {detail}")


def render(values, name="ci", namespace="build"):
    with helm.Chart.load(CHART) as c:
        c.validate_schema(values)
        out = c.render(values=values, name=name, namespace=namespace, is_install=True)
    notes = out.pop("nixgate/templates/NOTES.txt", "")
    docs = []
    for text in out.values():
        docs += [d for d in yaml.safe_load_all(text) if d]
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}, notes


def one(manifests, kind):
    found = [d for (k, n), d in manifests.items() if k == kind and not n.endswith("-dashboard")]
    assert len(found) == 1, f"{len(found)} {kind}"
    return found[0]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def run_rendered(manifests, label, values):
    """Starts nixgate with the StatefulSet's args and the ConfigMap's file (cache dir and
    listen address moved to a temp dir and a free loopback port), then GETs the probe paths."""
    sts = one(manifests, "StatefulSet")
    cm = one(manifests, "ConfigMap")
    container = sts["spec"]["template"]["spec"]["containers"][0]
    with tempfile.TemporaryDirectory() as tmp:
        conf = os.path.join(tmp, "nixgate.toml")
        with open(conf, "w") as f:
            f.write(cm["data"]["nixgate.toml"])
        port = free_port()
        args = []
        for a in container["args"]:
            if a.startswith("--config="):
                a = "--config=" + conf
            elif a.startswith("--cache-dir="):
                a = "--cache-dir=" + os.path.join(tmp, "cache")
            elif a.startswith("--listen="):
                a = f"--listen=127.0.0.1:{port}"
            args.append(a)
        env = dict(os.environ)
        for e in container.get("env", []):
            env[e["name"]] = e["value"]
        env["NIXGATE_HEALTH_URL"] = f"http://127.0.0.1:{port}"
        cc = subprocess.run([NIXGATE, "check-config", *args], env=env, capture_output=True, text=True)
        check(f"{label}: nixgate check-config accepts the rendered args and config", cc.returncode == 0, cc.stderr)
        policy = values.get("torrent", {}).get("peerPolicy", "http-first")
        check(f"{label}: the binary reads peer-policy {policy} from the ConfigMap", f"peer-policy          {policy}" in cc.stdout, cc.stdout)
        proc = subprocess.Popen([NIXGATE, "serve", *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            probes = {p: container[p]["httpGet"]["path"] for p in ("livenessProbe", "readinessProbe")}
            statuses = {}
            deadline = time.time() + 15
            while time.time() < deadline and len(statuses) < len(probes):
                for probe, path in probes.items():
                    try:
                        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1) as r:
                            statuses[probe] = r.status
                    except OSError:
                        time.sleep(0.1)
            for probe, path in probes.items():
                check(f"{label}: {probe} path {path} answers 200 on the real binary", statuses.get(probe) == 200, statuses)
            hc = subprocess.run([NIXGATE, "health"], env=env, capture_output=True, text=True)
            check(f"{label}: `nixgate health` with the pod's env passes", hc.returncode == 0, hc.stderr)
            run_helm_test_pod(manifests, label, port)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                return exposed_names(r.read().decode())
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def run_helm_test_pod(manifests, label, port):
    """Runs the `helm test` pod's script here, with the Service host and port pointed at the
    appliance and the freshly built nixgate first on PATH (the image has it in /usr/local/bin)."""
    if (pod := manifests.get(("Pod", "ci-nixgate-test"))) is None:
        return
    sel = one(manifests, "StatefulSet")["spec"]["selector"]["matchLabels"]
    check(f"{label}: the test Pod is a helm test hook that never restarts, outside the appliance's selector",
          pod["metadata"]["annotations"]["helm.sh/hook"] == "test" and pod["spec"]["restartPolicy"] == "Never"
          and not sel.items() <= pod["metadata"]["labels"].items())
    c, svc = pod["spec"]["containers"][0], manifests[("Service", "ci-nixgate")]["spec"]["ports"][0]
    env = {e["name"]: e["value"] for e in c["env"]}
    check(f"{label}: the test Pod targets the runner Service", (env["HOST"], env["PORT"]) == ("ci-nixgate.build.svc", str(svc["port"])))
    env.update(HOST="127.0.0.1", PORT=str(port), PATH=os.path.dirname(NIXGATE) + ":" + os.environ["PATH"])
    r = subprocess.run(c["command"], env=env, capture_output=True, text=True, timeout=30)
    check(f"{label}: the helm test script passes against the real binary",
          r.returncode == 0 and "/healthz: ok" in r.stdout and "/nix-cache-info: ok" in r.stdout, r.stdout + r.stderr)


def exposed_names(text):
    """Metric name -> its (label, value) pairs, from a /metrics answer (# TYPE'd families too)."""
    names = {m.group(1): set() for m in re.finditer(r"^# TYPE (\S+)", text, re.M)}
    for m in re.finditer(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})?", text, re.M):
        names.setdefault(m.group(1), set()).update(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
    return names


def unknown_selectors(expr, exposed):
    """Metric names and label values (= and plain =~ alternatives) /metrics does not have;
    namespace and job are the scrape's labels."""
    bad = promql_metric_names(expr) - exposed.keys()
    for name, matchers in re.findall(r"([a-zA-Z_:][\w:]*)\s*\{([^}]*)\}", expr):
        for label, op, value in re.findall(r'(\w+)\s*(=~|=)\s*"([^"]*)"', matchers):
            values = value.split("|") if op == "=~" else [value]
            if label not in ("namespace", "job") and all(re.fullmatch(r"[\w-]+", v) for v in values):
                bad |= {f"{name}{{{label}={v!r}}}" for v in values if (label, v) not in exposed.get(name, ())}
    return bad


def promql_metric_names(expr):
    """The metric names an expression selects: strings, label matchers, ranges, groupings and
    function calls removed, every identifier left is a metric."""
    e = re.sub(r'"(\\.|[^"\\])*"', '""', expr)
    e = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\$\w+", " ", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    idents = re.finditer(r"(?<![\w.])([a-zA-Z_:][\w:]*)(\s*\()?", e)
    return {m.group(1) for m in idents if not m.group(2) and m.group(1).lower() not in
            {"bool", "and", "or", "unless", "offset", "inf", "nan"}}


def promtool_check(groups, label, what):
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        yaml.safe_dump({"groups": groups}, f)
        f.flush()
        r = subprocess.run(["promtool", "check", "rules", f.name], capture_output=True, text=True)
    check(f"{label}: promtool check rules parses the {what}", r.returncode == 0, r.stdout + r.stderr)


def validate_all(manifests, label):
    for (kind, name), doc in manifests.items():
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD: checked by hand below
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            ok, detail = True, ""
        except Exception as e:  # ValidationError and friends
            ok, detail = False, str(e)[:500]
        check(f"{label}: {kind}/{name} is valid Kubernetes {K8S_VERSION}", ok, detail)


def assert_consistent(manifests, notes, values, label):
    sts = one(manifests, "StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    c = pod["containers"][0]
    http_port = values.get("service", {}).get("port", 8080)
    torrent = values.get("torrent", {})
    torrent_on = torrent.get("enabled", True)
    torrent_port = torrent.get("port", 6881)
    ports = {p["name"]: p for p in c["ports"]}
    check(f"{label}: container port 'http' is the service port", ports["http"]["containerPort"] == http_port)
    check(f"{label}: --listen uses the service port", f"--listen=[::]:{http_port}" in c["args"])
    check(f"{label}: probes hit /healthz and /readyz on 'http'",
          c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
          and c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"})
    svc = manifests[("Service", "ci-nixgate")]
    headless = manifests[("Service", "ci-nixgate-peers")]
    check(f"{label}: runner Service targets 'http' on the service port",
          svc["spec"]["ports"] == [{"name": "http", "port": http_port, "targetPort": "http", "protocol": "TCP"}])
    check(f"{label}: peers Service is headless", headless["spec"].get("clusterIP") == "None")
    check(f"{label}: StatefulSet serviceName is the headless Service", sts["spec"]["serviceName"] == "ci-nixgate-peers")
    for p in svc["spec"]["ports"] + headless["spec"]["ports"]:
        check(f"{label}: Service port {p['name']} targets a named container port", p["targetPort"] in ports)
    toml = one(manifests, "ConfigMap")["data"]["nixgate.toml"]
    if values.get("peers", {}).get("dns", True):
        check(f"{label}: --peers-dns names the headless Service and HTTP port",
              f'peers-dns = "ci-nixgate-peers.build.svc:{http_port}"' in toml, toml)
    check(f"{label}: torrent-listen uses the torrent port", f'torrent-listen = "[::]:{torrent_port}"' in toml)
    check(f"{label}: no-torrent follows torrent.enabled", f"no-torrent = {str(not torrent_on).lower()}" in toml)
    lan = values.get("lanProfile", {}).get("enabled", False)
    check(f"{label}: mDNS and hostNetwork only in the LAN profile",
          (f"no-mdns = {str(not lan).lower()}" in toml) and (pod.get("hostNetwork", False) == lan))
    sc, psc = c["securityContext"], pod["securityContext"]
    check(f"{label}: restrictive securityContext",
          psc["runAsNonRoot"] and psc["runAsUser"] != 0 and sc["readOnlyRootFilesystem"]
          and sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"])
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    check(f"{label}: the cache dir is the PVC (the only writable path)", "/var/cache/nixgate" in mounts
          and sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "cache")
    size = values.get("cache", {}).get("storage", {}).get("size", "50Gi")
    check(f"{label}: PVC sized from values",
          sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == size)
    check(f"{label}: NOTES print the runner nix.conf line",
          f"substituters = http://ci-nixgate.build.svc:{http_port}" in notes, notes[:300])
    np = manifests.get(("NetworkPolicy", "ci-nixgate"))
    if values.get("networkPolicy", {}).get("enabled", True):
        ing = [(p["port"], p["protocol"]) for rule in np["spec"]["ingress"] for p in rule["ports"]]
        check(f"{label}: NetworkPolicy admits runners on the Service port", ing[0] == (http_port, "TCP"))
        want = {(http_port, "TCP")} | ({(torrent_port, "TCP"), (torrent_port, "UDP")} if torrent_on else set())
        check(f"{label}: NetworkPolicy peer ports match the container ports",
              set(ing[1:]) == want and want == {(p["containerPort"], p["protocol"]) for p in c["ports"]})
        eg = np["spec"]["egress"]
        dns = values.get("networkPolicy", {}).get("dns", {})
        dns_ports = dns.get("ports", [53])
        check(f"{label}: egress only to upstream port, DNS and peers",
              len(eg) == 3 and eg[0]["ports"] == [{"port": values.get("networkPolicy", {}).get("upstreamPort", 443), "protocol": "TCP"}]
              and {(p["port"], p["protocol"]) for p in eg[1]["ports"]} == {(p, proto) for p in dns_ports for proto in ("UDP", "TCP")})
        default_dns = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                        "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}]
        check(f"{label}: DNS egress goes to networkPolicy.dns.to (kube-dns by default)",
              eg[1]["to"] == dns.get("to", default_dns), eg[1]["to"])
        peer_cidrs = values.get("networkPolicy", {}).get("peerCIDRs", [])
        check(f"{label}: egress to other replicas and to peerCIDRs on the peer ports",
              [t["ipBlock"]["cidr"] for t in eg[2]["to"] if "ipBlock" in t] == peer_cidrs
              and {(p["port"], p["protocol"]) for p in eg[2]["ports"]} == want)
    else:
        check(f"{label}: no NetworkPolicy when disabled", np is None)
    pdb = manifests.get(("PodDisruptionBudget", "ci-nixgate"))
    check(f"{label}: PodDisruptionBudget follows values",
          (pdb is not None) == values.get("podDisruptionBudget", {}).get("enabled", True))
    sm = manifests.get(("ServiceMonitor", "ci-nixgate"))
    if values.get("serviceMonitor", {}).get("enabled", False):
        check(f"{label}: ServiceMonitor scrapes /metrics on 'http' of the runner Service only",
              sm["spec"]["endpoints"][0]["port"] == "http" and sm["spec"]["endpoints"][0]["path"] == "/metrics"
              and sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
              and not sm["spec"]["selector"]["matchLabels"].items() <= headless["metadata"]["labels"].items())
    else:
        check(f"{label}: no ServiceMonitor by default", sm is None)


DASHBOARD_VARS = {"$__rate_interval": "5m", "$namespace": "build", "$job": "ci-nixgate"}
ALERTS = {"NixgateUpstreamFailing", "NixgateVerificationFailure", "NixgateCacheDiskNearlyFull", "NixgateNotReady"}
# Only with objectStore.url (the custom profile sets one).
BUCKET_ALERTS = {"NixgateObjectStoreCircuitOpen", "NixgateObjectStoreWritesDropped", "NixgateObjectStoreErrors"}


def check_dashboard(manifests, values, label, exposed):
    cm = manifests.get(("ConfigMap", "ci-nixgate-dashboard"))
    gd = values.get("grafanaDashboard", {})
    if not gd.get("enabled", False):
        return check(f"{label}: no dashboard ConfigMap by default", cm is None)
    meta = cm["metadata"]
    check(f"{label}: dashboard ConfigMap has grafana_dashboard=1, extra labels and namespace",
          meta["labels"]["grafana_dashboard"] == "1" and meta["labels"].items() >= gd.get("labels", {}).items()
          and meta["namespace"] == (gd.get("namespace") or "build"))
    dash = json.loads(cm["data"]["nixgate.json"])
    titles = " | ".join(p["title"] for p in dash["panels"]).lower()
    panels = ("hit ratio|egress saved|by source|fill vs cap|evictions|upstream errors|verification failures|peers|request latency"
              "|upstream response time|cpu and memory|object store bytes|object store circuit|queue depth|writes uploaded and dropped"
              "|object store errors by kind|egress the bucket saved|served by compression|cpu seconds per gb|old nix|transcodes by outcome")
    check(f"{label}: dashboard has every panel", all(w in titles for w in panels.split("|")), titles)
    cap = next(v["query"] for v in dash["templating"]["list"] if v["name"] == "cache_cap_bytes")
    check(f"{label}: dashboard cap is cache.maxSize in bytes", int(cap) == nixgate_bytes(values.get("cache", {}).get("maxSize", "45GiB")), cap)
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]  # rows have none
    queries = [v["query"]["query"] for v in dash["templating"]["list"] if v["type"] == "query"]
    used = set().union(*(promql_metric_names(e) for e in exprs))
    used |= {m for q in queries for m in re.findall(r"label_values\((\w+)", q)}
    bad = set().union(*(unknown_selectors(e, exposed) for e in exprs)) | (used - exposed.keys())
    check(f"{label}: dashboard uses only metrics and label values /metrics exposes", used and not bad, bad)
    subst = dict(DASHBOARD_VARS, **{"$cache_cap_bytes": cap})
    rules = [{"record": f"dashboard:query:{i}", "expr": re.sub(r"\$\w+", lambda m: subst[m.group(0)], e)}
             for i, e in enumerate(exprs)]
    promtool_check([{"name": "dashboard", "rules": rules}], label, "dashboard's queries")


def check_rules(manifests, values, label, exposed):
    pr = manifests.get(("PrometheusRule", "ci-nixgate"))
    if not values.get("prometheusRule", {}).get("enabled", False):
        return check(f"{label}: no PrometheusRule by default", pr is None)
    # A CRD, so not in kubernetes-validate's schemas: its structure is checked here, its PromQL
    # and templates by promtool.
    groups = pr["spec"]["groups"]
    rules = [r for g in groups for r in g["rules"]]
    check(f"{label}: PrometheusRule is monitoring.coreos.com/v1 with named groups of alerts",
          pr["apiVersion"] == "monitoring.coreos.com/v1" and set(pr["spec"]) == {"groups"}
          and all(set(g) == {"name", "rules"} for g in groups)
          and all(set(r) <= {"alert", "expr", "for", "labels", "annotations"} and re.fullmatch(r"\d+[smh]", r.get("for", "1m"))
                  and r["labels"]["severity"] in ("warning", "critical") and r["annotations"]["summary"] for r in rules))
    want = ALERTS | ({"NixgateNoPeers"} if values.get("replicas", 2) > 1 else set())
    want |= BUCKET_ALERTS if values.get("objectStore", {}).get("url") else set()
    check(f"{label}: alerts are {sorted(want)}", {r["alert"] for r in rules} == want)
    bad = set().union(*(unknown_selectors(r["expr"], exposed) for r in rules))
    check(f"{label}: alerts use only metrics and label values /metrics exposes", not bad, bad)
    check(f"{label}: alerts select this release's scrape job",
          all('namespace="build", job="ci-nixgate"' in r["expr"] for r in rules))
    failing = next(r["expr"] for r in rules if r["alert"] == "NixgateUpstreamFailing")
    check(f"{label}: NixgateUpstreamFailing counts every failure class /metrics has (auth_failed too)",
          all(f"{s}" in failing for s in ("5xx", "connect_error", "timeout", "circuit_open", "auth_failed")), failing)
    disk = next(r["expr"] for r in rules if r["alert"] == "NixgateCacheDiskNearlyFull")
    size = values.get("cache", {}).get("storage", {}).get("size", "50Gi")
    check(f"{label}: disk alert threshold is the PVC size in bytes", f"* {nixgate_bytes(size, k8s=True)}" in disk, disk)
    promtool_check(groups, label, "alerts")


def with_bucket_families(exposed, bucket):
    """A run's exposition plus the families only a run with a bucket has (the object-store
    tier's, rendered once --object-store is set): the dashboard shows them for every release,
    and a name or label value in neither exposition is still a failure."""
    return {**{n: v for n, v in bucket.items() if n not in exposed}, **exposed}


def nixgate_bytes(size, k8s=False):
    """Bytes of a nixgate size or (k8s) a Kubernetes quantity, where K, M, G, T are decimal."""
    n, unit = re.fullmatch(r"(\d+)\s*(\w*)", size).groups()
    decimal = (len(unit) == 2 and unit[1] == "B") or (k8s and len(unit) == 1)
    return int(n) * (1000 if decimal else 1024) ** " KMGT".index((unit.rstrip("B") or " ")[0])


def check_scheduling(manifests, values, label):
    sts = one(manifests, "StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    spread = values.get("topologySpread", {})
    tsc = pod.get("topologySpreadConstraints")
    if spread.get("enabled", True):
        check(f"{label}: replicas spread over nodes ({spread.get('whenUnsatisfiable', 'ScheduleAnyway')})",
              tsc == [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                       "whenUnsatisfiable": spread.get("whenUnsatisfiable", "ScheduleAnyway"),
                       "labelSelector": {"matchLabels": sts["spec"]["selector"]["matchLabels"]}}], tsc)
    else:
        check(f"{label}: no topologySpreadConstraints when disabled", tsc is None)
    c = pod["containers"][0]
    check(f"{label}: extraArgs and extraEnv reach the container",
          c["args"][3:] == values.get("extraArgs", []) and c["env"][2:] == values.get("extraEnv", []))
    meta = sts["spec"]["template"]["metadata"]
    check(f"{label}: podAnnotations, priorityClassName, nodeSelector, tolerations, affinity follow values",
          meta["annotations"].items() >= values.get("podAnnotations", {}).items()
          and pod.get("priorityClassName", "") == values.get("priorityClassName", "")
          and all(pod.get(k, d) == values.get(k, d) for k, d in [("nodeSelector", {}), ("tolerations", []), ("affinity", {})]))
    check(f"{label}: persistentVolumeClaimRetentionPolicy follows values",
          sts["spec"].get("persistentVolumeClaimRetentionPolicy", {}) == values.get("persistentVolumeClaimRetentionPolicy", {}))
    check(f"{label}: helm test Pod follows helmTest.enabled",
          (("Pod", "ci-nixgate-test") in manifests) == values.get("helmTest", {}).get("enabled", True))


def check_hooks(manifests, notes, values, label):
    """The optional hooks: each renders exactly as set, and nothing of it by default."""
    sts = one(manifests, "StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    c = pod["containers"][0]
    image = values.get("image", {})
    registry = values.get("global", {}).get("imageRegistry") or image.get("registry", "")
    ref = f"{image.get('repository', 'nixgate')}:{image.get('tag') or '0.1.0'}"
    want = f"{registry}/{ref}" if registry else ref
    images = [c["image"]] + [p["spec"]["containers"][0]["image"] for (k, _), p in manifests.items() if k == "Pod"]
    check(f"{label}: image is {want} (global.imageRegistry over image.registry) in the pod and the test pod",
          c["name"] == "nixgate" and all(i == want for i in images), images)

    sa = values.get("serviceAccount", {})
    sa_objs = [d for (k, _), d in manifests.items() if k == "ServiceAccount"]
    if sa.get("create"):
        name = sa.get("name") or "ci-nixgate"
        check(f"{label}: ServiceAccount {name} created, used by the pods, no API token",
              len(sa_objs) == 1 and sa_objs[0]["metadata"]["name"] == name and pod.get("serviceAccountName") == name
              and sa_objs[0].get("automountServiceAccountToken") is False and pod["automountServiceAccountToken"] is False
              and sa_objs[0]["metadata"].get("annotations", {}) == sa.get("annotations", {}), sa_objs)
    else:
        check(f"{label}: no ServiceAccount, the namespace's default (or serviceAccount.name), no API token",
              not sa_objs and pod.get("serviceAccountName", "") == sa.get("name", "") and pod["automountServiceAccountToken"] is False)

    fixed = {"config", "netrc", "upload", "signing"}
    extra_vols = [v for v in pod["volumes"] if v["name"] not in fixed]
    extra_mounts = [m for m in c["volumeMounts"] if m["name"] not in fixed | {"cache"}]
    check(f"{label}: extraVolumes and extraVolumeMounts follow values (none by default)",
          extra_vols == values.get("extraVolumes", []) and extra_mounts == values.get("extraVolumeMounts", []),
          (extra_vols, extra_mounts))
    check(f"{label}: extraContainers follow the nixgate container (none by default)",
          pod["containers"][1:] == values.get("extraContainers", []), pod["containers"][1:])

    sp = values.get("startupProbe", {})
    if sp.get("enabled"):
        got = c.get("startupProbe", {})
        check(f"{label}: startupProbe on /healthz with the values' timings",
              got.get("httpGet") == {"path": "/healthz", "port": "http"}
              and got.get("periodSeconds") == sp.get("periodSeconds", 5) and got.get("timeoutSeconds") == sp.get("timeoutSeconds", 3)
              and got.get("failureThreshold") == sp.get("failureThreshold", 30), got)
    else:
        check(f"{label}: no startupProbe by default", "startupProbe" not in c)

    td = values.get("service", {}).get("trafficDistribution", "")
    svc, headless = manifests[("Service", "ci-nixgate")], manifests[("Service", "ci-nixgate-peers")]
    check(f"{label}: trafficDistribution {td or '(unset)'} on the runners' Service only",
          svc["spec"].get("trafficDistribution", "") == td and "trafficDistribution" not in headless["spec"])

    check(f"{label}: NOTES give runners fallback = true and the negative TTL",
          "fallback = true" in notes and "narinfo-cache-negative-ttl = 60" in notes, notes)
    up = values.get("uploads", {})
    if up.get("existingSecret"):
        check(f"{label}: NOTES give the pushing runner's netrc line, nix copy --to and the negative-TTL gotcha",
              "machine ci-nixgate.build.svc login ci password <token>" in notes
              and "nix copy --to http://ci-nixgate.build.svc:" in notes and "narinfo-cache-negative-ttl 0" in notes, notes)
    else:
        check(f"{label}: NOTES say uploads are off and how to turn them on",
              "Uploads are off" in notes and "uploads.existingSecret" in notes, notes)
    check(f"{label}: NOTES mention upstream credentials only with upstreamAuth.existingSecret",
          ('status="auth_failed"' in notes) == bool(values.get("upstreamAuth", {}).get("existingSecret")))
    torrent = values.get("torrent", {})
    check(f"{label}: NOTES describe the torrent fallback as configured",
          ("BitTorrent is off" in notes) if not torrent.get("enabled", True)
          else (f"torrent.peerPolicy {torrent.get('peerPolicy', 'http-first')}" in notes and "swarm" in notes), notes)


def check_readme():
    """helm/nixgate/README.md is ci/gen_readme.py's output, and every value has a description."""
    spec = importlib.util.spec_from_file_location("gen_readme", os.path.join(CHART, "ci", "gen_readme.py"))
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    rows = gen.parse()
    check("chart README: every value in values.yaml has a `# --` description", rows and not gen.undocumented(rows),
          gen.undocumented(rows))
    with open(os.path.join(CHART, "README.md")) as f:
        committed = f.read()
    check("chart README: up to date with values.yaml (helm/nixgate/ci/gen_readme.py)", committed == gen.render())
    with open(os.path.join(CHART, "values.yaml")) as f:
        defaults = yaml.safe_load(f)
    leaves = set()

    def walk(v, path):
        if isinstance(v, dict) and v and path not in {r[0] for r in rows}:
            for k, sub in v.items():
                walk(sub, f"{path}.{k}" if path else k)
        else:
            leaves.add(path)
    walk(defaults, "")
    check("chart README: the table lists every leaf value", leaves == {r[0] for r in rows}, leaves ^ {r[0] for r in rows})
    check("chart README: every table key is in the README",
          all(f"| `{r[0]}` |" in committed for r in rows))
    with open(os.path.join(CHART, "values.schema.json")) as f:
        schema = json.load(f)
    check("values.schema.json and values.yaml have the same top-level keys",
          set(schema["properties"]) == set(defaults), set(schema["properties"]) ^ set(defaults))


def main():
    if not os.path.exists(NIXGATE):
        sys.exit(f"{NIXGATE} missing: run cargo build first")
    report = helm.lint(CHART, strict=True)
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    check("helm lint --strict: no warnings or errors", not problems, problems)

    # The defaults, then the chart's ci/*-values.yaml (chart-testing's convention).
    profiles = {"defaults": {}}
    for f in sorted(glob.glob(os.path.join(CHART, "ci", "*-values.yaml"))):
        with open(f) as fh:
            profiles[os.path.basename(f)[:-len("-values.yaml")]] = yaml.safe_load(fh)
    runs = []
    for label, values in profiles.items():
        manifests, notes = render(values)
        check(f"{label}: renders StatefulSet, ConfigMap and both Services", {k for k, _ in manifests} >= {"StatefulSet", "ConfigMap", "Service"} and len([1 for k, _ in manifests if k == "Service"]) == 2, list(manifests))
        validate_all(manifests, label)
        assert_consistent(manifests, notes, values, label)
        exposed = run_rendered(manifests, label, values)
        check_scheduling(manifests, values, label)
        check_hooks(manifests, notes, values, label)
        runs.append((label, values, manifests, exposed))
    # The dashboard's and alerts' names are checked against what the real binary exposes: a
    # profile with objectStore.url (custom: a bucket nobody listens at) against its own
    # /metrics, the others against theirs plus the families that run added.
    bucket = {}
    for _, values, _, exposed in runs:
        if values.get("objectStore", {}).get("url"):
            for name, labels in exposed.items():
                bucket.setdefault(name, set()).update(labels)
    added = bucket.keys() - runs[0][3].keys()
    check("a profile sets objectStore.url, and with it /metrics adds the nixgate_object_store_* families (only with it)",
          added and all(n.startswith("nixgate_object_store_") for n in added), sorted(added))
    for label, values, manifests, exposed in runs:
        if not values.get("objectStore", {}).get("url"):
            exposed = with_bucket_families(exposed, bucket)
        check_dashboard(manifests, values, label, exposed)
        check_rules(manifests, values, label, exposed)
    check_readme()

    for bad, why in [
        ({"replicas": 0}, "replicas 0"),
        ({"cache": {"maxSize": "lots", "storage": {"size": "1Gi"}}}, "unparseable size"),
        ({"trustedPublicKeys": ["not-a-key"]}, "malformed key"),
        ({"upstreams": ["ftp://x"]}, "non-http upstream"),
        ({"torrent": {"enabled": True, "port": 70000}}, "port out of range"),
        ({"replicaCount": 2}, "unknown key (typo)"),
        ({"torrent": {"enabled": True, "port": 6881, "peerPolicy": "fastest"}}, "unknown peer policy"),
        ({"topologySpread": {"whenUnsatisfiable": "Sometimes"}}, "unknown whenUnsatisfiable"),
        ({"persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Keep"}}, "unknown PVC retention"),
        ({"extraEnv": [{"value": "x"}]}, "extraEnv entry without a name"),
        ({"prometheusRule": {"enabled": True, "diskFullRatio": 2}}, "disk ratio over 1"),
        ({"grafanaDashboard": {"enabled": True, "dashboard": "x"}}, "unknown dashboard key"),
        ({"service": {"port": 8080, "trafficDistribution": "Nearby"}}, "unknown trafficDistribution"),
        ({"serviceAccount": {"create": True, "role": "admin"}}, "unknown serviceAccount key"),
        ({"serviceAccount": {"name": "Not_A_Name"}}, "malformed serviceAccount name"),
        ({"extraContainers": [{"name": "nixgate", "image": "x"}]}, "an extra container named nixgate"),
        ({"extraVolumeMounts": [{"name": "x"}]}, "an extra volume mount without a mountPath"),
        ({"startupProbe": {"enabled": True, "failureThreshold": 0}}, "startupProbe failureThreshold 0"),
        ({"networkPolicy": {"dns": {"to": [], "ports": [53]}}}, "empty DNS peers (would allow every destination)"),
        ({"networkPolicy": {"dns": {"namespaceSelector": {}}}}, "the old single-peer networkPolicy.dns form"),
        ({"networkPolicy": {"dns": {"to": [{"ipBlock": {"cidr": "10.0.0.10/32"}}], "ports": [0]}}}, "DNS port 0"),
    ]:
        try:
            render(bad)
            refused = False
        except Exception:
            refused = True
        check(f"values.schema.json refuses {why}", refused)

    print(f"test result: {'ok' if failed == 0 else 'FAILED'}. {passed} passed; {failed} failed")
    sys.exit(0 if failed == 0 and passed > 0 else 1)


if __name__ == "__main__":
    main()
