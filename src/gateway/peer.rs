//! Who is on the other end of a loopback connection: the peer socket's owner, read from the
//! kernel's socket tables (`/proc/net/tcp`, `/proc/net/tcp6`) by the connection's port pair.
//!
//! On a shared node every local user can reach a loopback port; BQSKit's protocol carries
//! pickled code and has no authentication, so the gateway serves it on loopback only to the
//! runtime's own user. The peer's socket is the entry whose local address is the peer's
//! address and whose remote address is ours; its `uid` column is the user that opened it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The uid owning the socket at `peer` connected to our `local`, if the kernel lists it in this
/// network namespace.
pub fn owner_uid(local: SocketAddr, peer: SocketAddr) -> std::io::Result<Option<u32>> {
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = match std::fs::read_to_string(table) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if let Some(uid) = find(&text, local, peer) {
            return Ok(Some(uid));
        }
    }
    Ok(None)
}

/// The runtime's own (effective) uid.
pub fn my_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The owner of the entry `peer -> local` in one table's text.
fn find(text: &str, local: SocketAddr, peer: SocketAddr) -> Option<u32> {
    let want_local = canonical(peer);
    let want_remote = canonical(local);
    for line in text.lines().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() < 8 {
            continue;
        }
        let (Some(l), Some(r)) = (parse_addr(cols[1]), parse_addr(cols[2])) else {
            continue;
        };
        if canonical(l) == want_local && canonical(r) == want_remote {
            return cols[7].parse().ok();
        }
    }
    None
}

/// IPv4-mapped IPv6 addresses as IPv4, so either table matches either form.
fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// `0100007F:1F40` (IPv4) or 32 hex digits then `:PORT` (IPv6): each 32-bit word is printed as
/// the host reads it from memory, so its native-endian bytes are the address bytes.
fn parse_addr(s: &str) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |h: &str| u32::from_str_radix(h, 16).ok().map(u32::to_ne_bytes);
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(ip)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[4 * i..4 * i + 4].copy_from_slice(&word(ip.get(8 * i..8 * i + 8)?)?);
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn a_loopback_peer_is_found_with_our_uid() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, peer) = l.accept().unwrap();
        let uid = owner_uid(s.local_addr().unwrap(), peer).unwrap();
        assert_eq!(uid, Some(my_uid()));
        drop(c);
    }

    #[test]
    fn table_lines_parse() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:9C40 0100007F:1D30 01 00000000:00000000 00:00000000 00000000 65534        0 12345 1 0 20 4 30 10 -1\n";
        let local: SocketAddr = "127.0.0.1:7472".parse().unwrap();
        let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        if cfg!(target_endian = "little") {
            assert_eq!(find(text, local, peer), Some(65534));
            let mapped: SocketAddr = "[::ffff:127.0.0.1]:40000".parse().unwrap();
            assert_eq!(find(text, local, mapped), Some(65534));
        }
        let other: SocketAddr = "127.0.0.1:40001".parse().unwrap();
        assert_eq!(find(text, local, other), None);
        assert_eq!(parse_addr("zz:1"), None);
    }
}
