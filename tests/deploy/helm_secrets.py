#!/usr/bin/env python3
"""Chart test of the secrets (upstream netrc, upload token, signing key): they come only from
existing Kubernetes Secrets, mounted read-only and passed to nixgate as files; the schema
refuses plain secret values; the rendered ConfigMap, with the mounted files in place, is
accepted by the real binary, which then refuses an upload without the token and takes one
with it. Reuses helm_chart.py's rendering and checks; ci/test.sh runs it after that script.
Prints cargo-style totals.
"""
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import helm_chart as hc  # noqa: E402

SECRETS = {
    "upstreamAuth": {"existingSecret": "nixgate-netrc"},
    "uploads": {"existingSecret": "nixgate-upload", "signingKeySecret": "nixgate-signing",
                "maxSize": "2GiB", "stagingSize": "512MiB", "stagingAge": "30m"},
    "upstreamEgress": {"httpsProxy": "http://127.0.0.1:3128", "noProxy": ".svc,10.0.0.0/8", "caSecret": "nixgate-ca"},
    # A bucket nobody listens at (port 9, discard): the appliance starts and is ready without it.
    "objectStore": {"url": "s3://nix-cache/site-a?endpoint=http://127.0.0.1:9&region=us-east-1",
                    "existingSecret": "nixgate-bucket", "egressTo": [{"ipBlock": {"cidr": "10.2.0.0/16"}}], "egressPorts": [8333]},
}
# What the pod's environment gets from the bucket's Secret.
BUCKET_KEYS = {"AWS_ACCESS_KEY_ID": "AKIACHARTTEST", "AWS_SECRET_ACCESS_KEY": "bucket-s3cret-value"}
MOUNTS = {"netrc": ("nixgate-netrc", "netrc", "netrc"), "upload": ("nixgate-upload", "token", "token"),
          "signing": ("nixgate-signing", "secret-key", "secret-key"), "ca": ("nixgate-ca", "ca.pem", "ca.pem")}
# The test vector key of src/nix/narinfo.rs (a test key, never a real one).
SECRET_KEY = "test-vector-1:SH5eFOxEUkbBjzbRTRnNBQDag7MqerQHPBtd65NIAgpmZubuzBt9MYtnlq7vfgiE09G1L/2uahnRIzKSaa1HMw=="


def check_defaults():
    m, _ = hc.render({})
    spec = hc.one(m, "StatefulSet")["spec"]["template"]["spec"]
    toml = hc.one(m, "ConfigMap")["data"]["nixgate.toml"]
    hc.check("defaults: no secret volumes", all("secret" not in v for v in spec["volumes"]), spec["volumes"])
    hc.check("defaults: uploads off, no netrc, no bucket", all(k not in toml for k in ("upload-token-file", "netrc-file", "signing-key-file", "object-store")), toml)
    env = {e["name"] for e in spec["containers"][0]["env"]}
    hc.check("defaults: no bucket keys in the environment", not env & set(BUCKET_KEYS), env)


def check_rendered(m):
    hc.validate_all(m, "secrets")
    spec = hc.one(m, "StatefulSet")["spec"]["template"]["spec"]
    vols = {v["name"]: v for v in spec["volumes"]}
    mounts = {v["name"]: v for v in spec["containers"][0]["volumeMounts"]}
    for name, (secret, key, file) in MOUNTS.items():
        v = vols.get(name, {}).get("secret", {})
        hc.check(f"secrets: {name} comes from the existing Secret {secret} (key {key})",
                 v.get("secretName") == secret and v.get("items") == [{"key": key, "path": file}], vols.get(name))
        hc.check(f"secrets: {name} is mounted read-only, not world-readable",
                 mounts.get(name, {}).get("readOnly") is True and v.get("defaultMode", 0o644) & 0o007 == 0, mounts.get(name))
    hc.check("secrets: the chart renders no Secret of its own", not any(k == "Secret" for k, _ in m))
    toml = hc.one(m, "ConfigMap")["data"]["nixgate.toml"]
    for line in ['netrc-file = "/run/secrets/nixgate/netrc/netrc"', 'upload-token-file = "/run/secrets/nixgate/upload/token"',
                 'signing-key-file = "/run/secrets/nixgate/signing/secret-key"', 'upload-max-size = "2GiB"',
                 'upload-staging-size = "512MiB"', 'upload-staging-age = "30m"', 'ca-file = "/run/secrets/nixgate/ca/ca.pem"']:
        hc.check(f"secrets: ConfigMap has {line}", line in toml, toml)
    env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
    hc.check("secrets: the upstream proxy reaches the container as HTTPS_PROXY/NO_PROXY",
             env.get("HTTPS_PROXY") == "http://127.0.0.1:3128" and env.get("NO_PROXY") == ".svc,10.0.0.0/8" and "HTTP_PROXY" not in env, env)
    refs = {e["name"]: e.get("valueFrom", {}).get("secretKeyRef") for e in spec["containers"][0]["env"]}
    hc.check("secrets: the bucket's keys come from the existing Secret as AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY",
             refs.get("AWS_ACCESS_KEY_ID") == {"name": "nixgate-bucket", "key": "access-key-id"}
             and refs.get("AWS_SECRET_ACCESS_KEY") == {"name": "nixgate-bucket", "key": "secret-access-key"}, refs)
    hc.check("secrets: ConfigMap names the bucket, never its keys",
             f'object-store = "{SECRETS["objectStore"]["url"]}"' in toml and "AWS_" not in toml, toml)
    egress = hc.one(m, "NetworkPolicy")["spec"]["egress"]
    hc.check("secrets: the NetworkPolicy lets the pods reach the bucket (objectStore.egressTo on egressPorts)",
             {"to": [{"ipBlock": {"cidr": "10.2.0.0/16"}}], "ports": [{"port": 8333, "protocol": "TCP"}]} in egress, egress)
    return toml


def put(port, token):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/nar/{'0' * 52}.nar.xz", data=b"x", method="PUT")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_ca(tmp):
    """A throwaway self-signed CA certificate (PEM), as an operator's CA Secret would hold."""
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=nixgate chart test CA", "-keyout", os.path.join(tmp, "ca.key"),
                    "-out", os.path.join(tmp, "ca.crt")], check=True, capture_output=True)
    with open(os.path.join(tmp, "ca.crt")) as f:
        return f.read()


def run_binary(toml):
    """The rendered config with the Secret files where the pod would have them (moved to a
    temp dir): check-config accepts it, and the running binary takes uploads only with the token."""
    with tempfile.TemporaryDirectory() as tmp:
        contents = {"netrc": "machine cache.example login ci password s3cret\n", "token": "t0ken\n", "secret-key": SECRET_KEY,
                    "ca.pem": test_ca(tmp)}
        for name, (_, _, file) in MOUNTS.items():
            os.makedirs(os.path.join(tmp, name))
            with open(os.path.join(tmp, name, file), "w") as f:
                f.write(contents[file])
        conf = os.path.join(tmp, "nixgate.toml")
        with open(conf, "w") as f:
            f.write(toml.replace("/run/secrets/nixgate", tmp).replace('peers-dns = "', '# peers-dns = "'))
        port = hc.free_port()
        args = [f"--config={conf}", f"--cache-dir={tmp}/cache", f"--listen=127.0.0.1:{port}"]
        env = {**os.environ, **BUCKET_KEYS}
        cc = subprocess.run([hc.NIXGATE, "check-config", *args], capture_output=True, text=True, env=env)
        hc.check("secrets: check-config accepts the rendered config and files", cc.returncode == 0 and "(uploads on)" in cc.stdout, cc.stdout + cc.stderr)
        hc.check("secrets: check-config reads the mounted CA file", "ca.pem (1 certificates)" in cc.stdout, cc.stdout)
        hc.check("secrets: check-config prints the signing public key, never a secret",
                 "test-vector-1:" in cc.stdout and SECRET_KEY.split(":")[1] not in cc.stdout and "t0ken" not in cc.stdout and "s3cret" not in cc.stdout, cc.stdout)
        hc.check("secrets: check-config names the bucket and never prints its secret key",
                 "s3://nix-cache/site-a" in cc.stdout and BUCKET_KEYS["AWS_SECRET_ACCESS_KEY"] not in cc.stdout + cc.stderr, cc.stdout)
        proc = subprocess.Popen([hc.NIXGATE, "serve", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        try:
            deadline, statuses = time.time() + 15, None
            while time.time() < deadline and statuses is None:
                try:
                    statuses = (put(port, None), put(port, "wrong"), put(port, "t0ken"))
                except OSError:
                    time.sleep(0.1)
            # With the token the NAR is refused only because its bytes do not match its name.
            hc.check("secrets: the binary refuses uploads without the token (401) and reads the one mounted", statuses == (401, 401, 400), statuses)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
                hc.check("secrets: ready (200) while the configured bucket does not answer", r.status == 200, r.status)
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def check_notes(notes, values):
    """NOTES tell the operator what the Secrets turned on: the pushing runner's netrc line and
    push command, the narinfo-cache gotchas of the README (negative TTL, and with the signing
    key the unsigned narinfo the pusher keeps), the signing key's public key, and where refused
    upstream credentials show."""
    hc.check("secrets: NOTES give the pushing runner's netrc line (host = the runners' Service)",
             "machine ci-nixgate.build.svc login ci password <token>" in notes, notes)
    hc.check("secrets: NOTES give `nix copy --to` and the negative-TTL gotcha",
             "nix copy --to http://ci-nixgate.build.svc:8080 " in notes
             and "--option narinfo-cache-negative-ttl 0" in notes, notes)
    hc.check("secrets: with the signing key, NOTES give the positive-TTL gotcha of the pushing machine",
             "--option narinfo-cache-positive-ttl 0" in notes and "?secret-key=FILE" in notes, notes)
    hc.check("secrets: NOTES name the upload Secret and budget, never a secret value",
             f"Secret {values['uploads']['existingSecret']}, key token; budget {values['uploads']['maxSize']}" in notes
             and SECRET_KEY not in notes, notes)
    hc.check("secrets: NOTES say how to find the signing key's public key",
             f"Secret {values['uploads']['signingKeySecret']}" in notes and "signing unsigned uploads" in notes, notes)
    hc.check("secrets: NOTES point at auth_failed for the upstream netrc",
             f"netrc of Secret {values['upstreamAuth']['existingSecret']}" in notes and 'status="auth_failed"' in notes, notes)
    m, notes = hc.render({"uploads": {"existingSecret": "nixgate-upload"}})
    hc.check("secrets: without a signing key, NOTES say uploads must carry a trusted signature",
             "must carry a signature" in notes and "signing unsigned uploads" not in notes
             and "narinfo-cache-positive-ttl" not in notes, notes)


def check_schema():
    for bad, why in [
        ({"uploads": {"token": "plain"}}, "a plain upload token"),
        ({"uploads": {"signingKey": "k:AAAA"}}, "a plain signing key"),
        ({"upstreamAuth": {"netrc": "machine x password y"}}, "a plain netrc"),
        ({"uploads": {"existingSecret": "Not_A_Name"}}, "an invalid Secret name"),
        ({"uploads": {"maxSize": "lots"}}, "an unparseable upload size"),
        ({"uploads": {"stagingAge": "soon"}}, "an unparseable staging age"),
        ({"objectStore": {"url": "s3://AKIA:s3cret@nix-cache/ci"}}, "keys in the object-store URL"),
        ({"objectStore": {"url": "https://nix-cache.s3.example/ci"}}, "an object-store URL that is not s3://"),
        ({"objectStore": {"accessKeyId": "AKIA"}}, "a plain bucket key"),
    ]:
        try:
            hc.render(bad)
            refused = False
        except Exception:
            refused = True
        hc.check(f"values.schema.json refuses {why}", refused)


def main():
    if not os.path.exists(hc.NIXGATE):
        sys.exit(f"{hc.NIXGATE} missing: run cargo build first")
    check_defaults()
    manifests, notes = hc.render(SECRETS)
    run_binary(check_rendered(manifests))
    check_notes(notes, SECRETS)
    check_schema()
    print(f"test result: {'ok' if hc.failed == 0 else 'FAILED'}. {hc.passed} passed; {hc.failed} failed")
    sys.exit(0 if hc.failed == 0 and hc.passed > 0 else 1)


if __name__ == "__main__":
    main()
