//! `pullnix wake`: power on machines with Wake-on-LAN, the first step of a bare-metal install
//! (the woken machine then network-boots through pixiecore and `pullnix pxe-api`).
//!
//! A magic packet is 6 bytes of 0xFF followed by the target's MAC address 16 times (102 bytes),
//! sent as a UDP broadcast; the network card matches it in hardware, whatever the port.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;

use crate::cmd::Cmd;
use crate::exit::Exit;
use crate::hosts::{Hosts, Mac};

/// `pullnix wake …` as given on the command line.
#[derive(Debug, PartialEq, Eq)]
pub struct Args {
    pub targets: Vec<String>,
    pub broadcast: Option<Ipv4Addr>,
    pub port: u16,
    pub interface: Option<String>,
    pub hosts: Option<PathBuf>,
}

const USAGE: &str = "usage: pullnix wake [--broadcast ADDR] [--port PORT] [--interface IFACE] \
                     [--hosts FILE] MAC|HOST...";

/// Parses what follows `wake`.
pub fn parse(rest: &[String]) -> Result<Args> {
    let mut args = Args {
        targets: Vec::new(),
        broadcast: None,
        port: 9,
        interface: None,
        hosts: None,
    };
    let mut flags = crate::cli::Flags::new(rest);
    while let Some((flag, inline)) = flags.next_word() {
        let mut value = || flags.value(flag, inline);
        match flag {
            "--broadcast" => {
                let v = value()?;
                args.broadcast = Some(
                    v.parse()
                        .map_err(|_| anyhow!("--broadcast {v:?} is not an IPv4 address"))?,
                );
            }
            "--port" => {
                let v = value()?;
                args.port = v
                    .parse()
                    .ok()
                    .filter(|&p| p != 0)
                    .ok_or_else(|| anyhow!("--port {v:?} is not a UDP port (1-65535)"))?;
            }
            "--interface" => {
                let v = value()?;
                // Linux interface names: at most 15 bytes, no '/', whitespace or ':' and not an
                // option of `ip`.
                if v.is_empty()
                    || v.len() > 15
                    || v.starts_with('-')
                    || v.contains(|c: char| c.is_whitespace() || c == '/' || c == ':')
                {
                    bail!("--interface {v:?} is not a network interface name");
                }
                args.interface = Some(v);
            }
            "--hosts" => args.hosts = Some(PathBuf::from(value()?)),
            s if s.starts_with('-') && Mac::parse(s).is_none() => {
                bail!("unknown option {s:?} for wake; {USAGE}")
            }
            word => args.targets.push(word.to_owned()),
        }
    }
    if args.targets.is_empty() {
        bail!("wake needs at least one MAC address or host name; {USAGE}");
    }
    if args.hosts.is_none()
        && let Some(bad) = args.targets.iter().find(|t| Mac::parse(t).is_none())
    {
        bail!(
            "{bad:?} is not a MAC address (aa:bb:cc:dd:ee:ff, aa-bb-cc-dd-ee-ff or aabbccddeeff); \
             host names need --hosts FILE"
        );
    }
    Ok(args)
}

/// The 102-byte Wake-on-LAN payload for `mac`.
pub fn magic_packet(mac: Mac) -> [u8; 102] {
    let mut p = [0xFF; 102];
    for chunk in p[6..].chunks_exact_mut(6) {
        chunk.copy_from_slice(&mac.0);
    }
    p
}

pub fn command(args: &Args) -> Result<()> {
    // Every argument is resolved before the first packet goes out: a typo wakes nothing.
    let hosts = args.hosts.as_deref().map(Hosts::load).transpose()?;
    let mut targets = Vec::new();
    for t in &args.targets {
        let target = match (Mac::parse(t), &hosts) {
            (Some(mac), h) => {
                let name = h
                    .as_ref()
                    .and_then(|h| h.by_mac(mac))
                    .map(|h| h.name.clone());
                (mac, name)
            }
            (None, Some(h)) => {
                let host = h
                    .by_name(t)
                    .ok_or_else(|| {
                        let file = args.hosts.clone().unwrap_or_default();
                        anyhow!(
                            "{t:?} is neither a MAC address nor a host in {}",
                            file.display()
                        )
                    })
                    .context(Exit::Usage)?;
                (host.mac, Some(host.name.clone()))
            }
            (None, None) => {
                return Err(anyhow!("{t:?} is not a MAC address")).context(Exit::Usage);
            }
        };
        targets.push(target);
    }

    let (source, iface_broadcast) = match &args.interface {
        Some(iface) => {
            let (addr, brd) = interface_address(iface)?;
            (addr, brd)
        }
        None => (Ipv4Addr::UNSPECIFIED, None),
    };
    let broadcast = args
        .broadcast
        .or(iface_broadcast)
        .unwrap_or(Ipv4Addr::BROADCAST);
    let dest = SocketAddrV4::new(broadcast, args.port);

    // Bound to the interface's own address, the kernel sends even a limited broadcast
    // (255.255.255.255) out of that interface (no SO_BINDTODEVICE, which needs a raw
    // setsockopt that rustix does not wrap).
    let socket = UdpSocket::bind(SocketAddrV4::new(source, 0))
        .with_context(|| format!("binding a UDP socket to {source}"))?;
    socket
        .set_broadcast(true)
        .context("enabling SO_BROADCAST on the UDP socket")?;
    socket
        .set_write_timeout(Some(Duration::from_secs(5)))
        .context("setting a send timeout")?;
    let via = args
        .interface
        .as_deref()
        .map(|i| format!(" via {i} ({source})"))
        .unwrap_or_default();
    for (mac, name) in targets {
        let who = name.map_or_else(|| mac.to_string(), |n| format!("{n} ({mac})"));
        // The arguments were all fine by now, so a failure here is the network's (no route,
        // interface down): its own exit code lets a script tell it from a typo.
        let sent = socket
            .send_to(&magic_packet(mac), dest)
            .with_context(|| format!("sending the magic packet for {who} to {dest}{via}"))
            .context(Exit::Send)?;
        if sent != 102 {
            return Err(anyhow!(
                "sent only {sent} of 102 bytes of the magic packet for {who} to {dest}"
            ))
            .context(Exit::Send);
        }
        crate::info!("wake: sent magic packet for {who} to {dest}{via}");
    }
    Ok(())
}

#[derive(Deserialize)]
struct IpLink {
    #[serde(default)]
    addr_info: Vec<IpAddr>,
}

#[derive(Deserialize)]
struct IpAddr {
    local: Option<Ipv4Addr>,
    broadcast: Option<Ipv4Addr>,
}

/// The first IPv4 address of `iface` and its broadcast address, from iproute2's JSON output.
fn interface_address(iface: &str) -> Result<(Ipv4Addr, Option<Ipv4Addr>)> {
    let cmd = Cmd::new("ip")
        .args(["-j", "-4", "addr", "show", "dev", iface])
        .timeout(Duration::from_secs(10));
    let out = cmd.output()?;
    if !out.status.success() {
        return Err(anyhow!(
            "no network interface {iface:?}: {}",
            out.stderr_tail()
        ))
        .context(Exit::Usage);
    }
    let links: Vec<IpLink> = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("reading the output of `{}`", cmd.display()))?;
    links
        .iter()
        .flat_map(|l| &l.addr_info)
        .find_map(|a| a.local.map(|l| (l, a.broadcast)))
        .ok_or_else(|| anyhow!("network interface {iface:?} has no IPv4 address"))
        .context(Exit::Usage)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Args> {
        parse(&s.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
    }

    #[test]
    fn packet_layout() {
        let mac = Mac([1, 2, 3, 4, 5, 6]);
        let p = magic_packet(mac);
        assert_eq!(p.len(), 102);
        assert_eq!(p[..6], [0xFF; 6]);
        for i in 0..16 {
            assert_eq!(p[6 + 6 * i..12 + 6 * i], [1, 2, 3, 4, 5, 6]);
        }
    }

    #[test]
    fn options() {
        let a = p("aa:bb:cc:dd:ee:ff --broadcast 10.0.0.255 --port=7 AABBCCDDEEFF").unwrap();
        assert_eq!(a.targets, ["aa:bb:cc:dd:ee:ff", "AABBCCDDEEFF"]);
        assert_eq!(a.broadcast, Some(Ipv4Addr::new(10, 0, 0, 255)));
        assert_eq!(a.port, 7);
        let a = p("--hosts /h.toml edge-01 --interface eth0").unwrap();
        assert_eq!(a.hosts, Some(PathBuf::from("/h.toml")));
        assert_eq!(a.interface.as_deref(), Some("eth0"));
        assert_eq!(a.port, 9);
    }

    #[test]
    fn mistakes() {
        for (s, needle) in [
            ("", "at least one"),
            ("aa:bb:cc:dd:ee", "\"aa:bb:cc:dd:ee\""),
            ("edge-01", "--hosts"),
            ("aabbccddeeff --port 0", "--port"),
            ("aabbccddeeff --port", "needs a value"),
            ("aabbccddeeff --broadcast x", "--broadcast"),
            ("aabbccddeeff --interface -x", "--interface"),
            ("aabbccddeeff --fast", "--fast"),
        ] {
            let msg = format!("{:#}", p(s).unwrap_err());
            assert!(msg.contains(needle), "{s}: {msg}");
        }
    }
}
