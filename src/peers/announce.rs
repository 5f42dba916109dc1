//! What this appliance announces over mDNS: its DNS-SD instance name and record (TXT `v=1`,
//! `id=`, `path=/`, `bt=` with BitTorrent on); a loopback listen address is never announced.

use std::net::SocketAddr;

use mdns_sd::{IfKind, ServiceInfo};

use super::service::{MdnsError, SERVICE_TYPE, TXT_VERSION};

/// What this appliance announces.
#[derive(Debug, Clone)]
pub struct Announcement {
    /// The stable peer id (see [`super::load_or_create_id`]).
    pub id: String,
    /// The HTTP address actually bound.
    pub listen: SocketAddr,
    /// The BitTorrent port, when BitTorrent is on.
    pub bt_port: Option<u16>,
}

impl Announcement {
    /// `nixgate-<hostname>-<id prefix>`, at most 63 bytes (RFC 6763 §4.1.1).
    pub fn instance_name(&self) -> String {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let host: String = host
            .trim()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(40)
            .collect();
        let id = &self.id[..self.id.len().min(8)];
        if host.is_empty() {
            format!("nixgate-{id}")
        } else {
            format!("nixgate-{host}-{id}")
        }
    }

    /// The record to register; `None` for a loopback listen address.
    pub fn service_info(&self) -> Result<Option<ServiceInfo>, MdnsError> {
        let ip = self.listen.ip();
        if ip.is_loopback() {
            return Ok(None);
        }
        let bt = self.bt_port.map(|p| p.to_string());
        let mut txt = vec![("v", TXT_VERSION), ("id", self.id.as_str()), ("path", "/")];
        if let Some(bt) = &bt {
            txt.push(("bt", bt));
        }
        let host = format!("nixgate-{}.local.", &self.id[..self.id.len().min(12)]);
        let name = self.instance_name();
        let port = self.listen.port();
        let info = if ip.is_unspecified() {
            let mut info = ServiceInfo::new(SERVICE_TYPE, &name, &host, (), port, &txt[..])?
                .enable_addr_auto();
            if ip.is_ipv4() {
                info.set_interfaces(vec![IfKind::IPv4]);
            }
            info
        } else {
            ServiceInfo::new(SERVICE_TYPE, &name, &host, ip, port, &txt[..])?
        };
        Ok(Some(info))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me(listen: &str) -> Announcement {
        Announcement {
            id: "0123456789abcdef0123456789abcdef".into(),
            listen: listen.parse().unwrap(),
            bt_port: Some(6881),
        }
    }

    #[test]
    fn announcement_record() {
        assert!(me("127.0.0.1:8080").service_info().unwrap().is_none());
        assert!(me("[::1]:8080").service_info().unwrap().is_none());
        let info = me("10.1.2.3:8080").service_info().unwrap().unwrap();
        assert_eq!(info.get_type(), SERVICE_TYPE);
        assert_eq!(info.get_port(), 8080);
        assert_eq!(info.get_property_val_str("v"), Some("1"));
        assert_eq!(info.get_property_val_str("bt"), Some("6881"));
        assert_eq!(info.get_property_val_str("path"), Some("/"));
        assert_eq!(
            info.get_property_val_str("id"),
            Some("0123456789abcdef0123456789abcdef")
        );
        assert!(me("[::]:8080")
            .service_info()
            .unwrap()
            .unwrap()
            .is_addr_auto());
        let name = me("[::]:8080").instance_name();
        assert!(name.starts_with("nixgate-") && name.ends_with("-01234567") && name.len() <= 63);
    }
}
