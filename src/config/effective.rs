//! The effective settings as `check-config` prints them: one line per setting, under its
//! flag's name (`--no-fleet` as `fleet`), read from the same [`Config`] groups the subsystems
//! are handed, so the printout cannot drift from what runs. Secrets never appear: URLs are
//! redacted (`https://***@host/`), secret files are named, never read out; a unit test checks
//! that every `serve` flag has a line.

use std::fmt::Display;
use std::path::Path;
use std::time::Duration;

use super::Config;
use crate::fetch::PeerPolicy;
use crate::redact::redact;

/// Lines of `(setting, value)`; list settings have a line per item (`none` when empty).
pub type Lines = Vec<(&'static str, String)>;

impl Config {
    /// Every effective setting, in the order of `--help`.
    pub fn effective(&self) -> Lines {
        let mut l = Lines::new();
        self.server_lines(&mut l);
        self.upstream_lines(&mut l);
        self.peer_lines(&mut l);
        self.torrent_lines(&mut l);
        self.upload_lines(&mut l);
        l
    }

    /// What `check-config` prints: `configuration OK`, then a line per setting.
    pub fn render_effective(&self) -> String {
        let mut out = String::from("configuration OK\n");
        for (name, value) in self.effective() {
            out.push_str(&format!("  {name:<20} {value}\n"));
        }
        out
    }

    fn server_lines(&self, l: &mut Lines) {
        l.push(("config", path(self.config_file.as_deref())));
        l.push(("listen", self.listen.to_string()));
        let dir = format!("{} (writable)", self.cache_dir.display());
        l.push(("cache-dir", dir));
        l.push(("max-cache-size", bytes(self.max_cache_size)));
        l.push(("priority", self.priority.to_string()));
        let serve = self.fetch.serve.as_str();
        l.push(("serve-compression", serve.into()));
        let c = &self.connections;
        l.push(("send-timeout", secs(c.send_timeout)));
        l.push(("max-connections", c.max.to_string()));
        l.push(("max-connections-per-ip", c.per_ip.to_string()));
        let format = match self.log_format {
            crate::telemetry::LogFormat::Human => "human",
            crate::telemetry::LogFormat::Json => "json",
        };
        l.push(("log-format", format.into()));
        l.push(("status-interval", secs(self.status_interval)));
    }

    fn upstream_lines(&self, l: &mut Lines) {
        let f = &self.fetch;
        list(l, "upstream", f.upstreams.iter().map(redact));
        let netrc = match &self.netrc_file {
            Some(p) => format!("{} ({:?})", p.display(), f.netrc),
            None => "none".into(),
        };
        l.push(("netrc-file", netrc));
        let e = &f.egress;
        let ca = match &e.ca_file {
            Some(p) => format!("{} ({} certificates)", p.display(), e.extra_roots.len()),
            None => "none (Mozilla roots only)".into(),
        };
        l.push(("ca-file", ca));
        let bucket = f.object_store.as_ref();
        let bucket = bucket.map_or("none".into(), |o| match o.credentials {
            Some(_) => format!("{} (signed: AWS credentials found)", o.url),
            None => format!("{} (anonymous: no credentials)", o.url),
        });
        l.push(("object-store", bucket));
        let env = |v: &Option<String>| {
            v.as_deref()
                .map_or("none".into(), crate::redact::redact_all)
        };
        l.push(("https-proxy (env)", env(&e.https_proxy)));
        l.push(("http-proxy (env)", env(&e.http_proxy)));
        l.push(("no-proxy (env)", env(&e.no_proxy)));
        list(l, "trusted-public-key", f.keys.keys().iter());
        l.push(("negative-ttl", secs(f.negative_ttl)));
        l.push(("upstream-down-status", self.down_policy.status.to_string()));
        l.push(("retry-after", secs(self.down_policy.retry_after)));
        l.push(("connect-timeout", secs(f.timeouts.connect)));
        l.push(("first-byte-timeout", secs(f.timeouts.first_byte)));
        l.push(("stall-timeout", secs(f.timeouts.stall)));
        l.push(("narinfo-timeout", secs(f.timeouts.narinfo)));
        l.push((
            "min-transfer-rate",
            format!("{} bytes/s", f.timeouts.min_rate),
        ));
    }

    fn peer_lines(&self, l: &mut Lines) {
        list(l, "peer", self.peers.iter().map(redact));
        let dns = self.peers_dns.as_ref().map(|d| d.to_string());
        l.push(("peers-dns", dns.unwrap_or_else(|| "none".into())));
        let t = &self.fetch.tuning;
        let policy = match t.policy {
            PeerPolicy::HttpFirst => "http-first",
            PeerPolicy::PeersFirst => "peers-first",
        };
        l.push(("peer-policy", policy.into()));
        l.push(("accelerate-size", bytes(t.accelerate_size)));
        l.push((
            "accelerate-below",
            format!("{} bytes/s", t.accelerate_below),
        ));
        l.push(("max-peers", t.max_peers.to_string()));
        l.push(("mdns", on(self.mdns)));
        l.push(("fleet", on(self.fleet.configured)));
        l.push(("fleet-mdns", on(self.fleet.mdns)));
    }

    fn torrent_lines(&self, l: &mut Lines) {
        let e = &self.engine;
        l.push(("torrent", on(self.torrent)));
        l.push(("torrent-listen", e.listen.to_string()));
        list(l, "tracker", e.trackers.iter().map(redact));
        l.push(("torrent-hot-set", e.hot_set.to_string()));
        l.push(("hash-concurrency", e.hash_concurrency.to_string()));
        let limit = e.upload_limit.map(|b| format!("{b} bytes/s"));
        l.push((
            "torrent-upload-limit",
            limit.unwrap_or_else(|| "none".into()),
        ));
    }

    fn upload_lines(&self, l: &mut Lines) {
        let u = &self.uploads;
        let token = match &self.upload_token_file {
            Some(p) => format!("{} (uploads on)", p.display()),
            None => "none (uploads off)".into(),
        };
        l.push(("upload-token-file", token));
        let key = match (&self.signing_key_file, &u.signing_key) {
            (Some(p), Some(k)) => format!("{} (public key {})", p.display(), k.public()),
            _ => "none".into(),
        };
        l.push(("signing-key-file", key));
        l.push(("upload-max-size", bytes(u.max_bytes)));
        l.push(("upload-staging-size", bytes(u.staging_bytes)));
        l.push(("upload-staging-age", secs(u.staging_age)));
    }
}

/// One line per item, or one `none` line.
fn list<T: Display>(l: &mut Lines, name: &'static str, items: impl Iterator<Item = T>) {
    let before = l.len();
    l.extend(items.map(|i| (name, i.to_string())));
    if l.len() == before {
        l.push((name, "none".into()));
    }
}

fn path(p: Option<&Path>) -> String {
    p.map_or_else(|| "none".into(), |p| p.display().to_string())
}

fn bytes(n: u64) -> String {
    format!("{} ({n} bytes)", crate::units::human_bytes(n))
}

fn secs(d: Duration) -> String {
    format!("{d:?}")
}

fn on(b: bool) -> String {
    if b {
        "on".into()
    } else {
        "off".into()
    }
}
