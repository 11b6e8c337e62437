//! BQSKit client frames out of rank 0, written as pickle opcodes by hand.
//!
//! Every message is `(RuntimeMessage(n), payload)`. The payloads rank 0 sends are plain values
//! (None, text, the pickled log tuple, a `CompilationStatus`) or a job's result, which the
//! worker pickled with protocol 3 (no frames) so it can be spliced in unopened. No memo entries
//! are written before the spliced part, so its own memo indices stay valid.

/// Message numbers of `bqskit.runtime.message.RuntimeMessage`.
pub mod msg {
    pub const CONNECT: i64 = 0;
    pub const DISCONNECT: i64 = 1;
    pub const ERROR: u8 = 4;
    pub const REQUEST: i64 = 5;
    pub const RESULT: u8 = 6;
    pub const SUBMIT: i64 = 7;
    pub const STATUS: u8 = 9;
    pub const STATUS_REQ: i64 = 9;
    pub const LOG: u8 = 10;
    pub const CANCEL: u8 = 11;
    pub const CANCEL_REQ: i64 = 11;
    pub const READY: u8 = 15;
}

/// `bqskit.compiler.status.CompilationStatus` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Unknown = 0,
    Running = 1,
    Done = 2,
}

const PROTO3: [u8; 2] = [0x80, 3];

fn global(out: &mut Vec<u8>, module: &str, name: &str) {
    out.push(b'c');
    out.extend_from_slice(module.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(name.as_bytes());
    out.push(b'\n');
}

/// `cls(n)` for a small int enum member.
fn enum_member(out: &mut Vec<u8>, module: &str, name: &str, n: u8) {
    global(out, module, name);
    out.extend_from_slice(&[b'K', n, 0x85, b'R']);
}

fn text(out: &mut Vec<u8>, s: &str) {
    out.push(b'X');
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn int(out: &mut Vec<u8>, v: i64) {
    let v = v.clamp(i32::MIN as i64, i32::MAX as i64) as i32;
    out.push(b'J');
    out.extend_from_slice(&v.to_le_bytes());
}

fn bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.push(b'B');
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

fn message(kind: u8, payload: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut out = PROTO3.to_vec();
    enum_member(&mut out, "bqskit.runtime.message", "RuntimeMessage", kind);
    payload(&mut out);
    out.extend_from_slice(&[0x86, b'.']);
    out
}

/// A message whose payload is None (READY, the CANCEL acknowledgement).
pub fn empty(kind: u8) -> Vec<u8> {
    message(kind, |o| o.push(b'N'))
}

/// ERROR with its text (the client raises `RuntimeError(text)`).
pub fn error(message_text: &str) -> Vec<u8> {
    message(msg::ERROR, |o| text(o, message_text))
}

/// STATUS with a `CompilationStatus`.
pub fn status(s: Status) -> Vec<u8> {
    message(msg::STATUS, |o| {
        enum_member(o, "bqskit.compiler.status", "CompilationStatus", s as u8)
    })
}

/// LOG: the payload is the pickled `(name, levelno, message)` the client logs with
/// `logging.getLogger(name).log(levelno, message)`.
pub fn log(name: &str, levelno: i64, message_text: &str) -> Vec<u8> {
    let mut inner = PROTO3.to_vec();
    text(&mut inner, name);
    int(&mut inner, levelno);
    text(&mut inner, message_text);
    inner.extend_from_slice(&[0x87, b'.']);
    message(msg::LOG, |o| bytes(o, &inner))
}

/// RESULT around a protocol-3 pickle made by the worker; `None` if it is not one.
pub fn result(pickled: &[u8]) -> Option<Vec<u8>> {
    if pickled.len() < 3 || pickled[..2] != PROTO3 || pickled[pickled.len() - 1] != b'.' {
        return None;
    }
    Some(message(msg::RESULT, |o| {
        o.extend_from_slice(&pickled[2..pickled.len() - 1])
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_have_the_expected_shape() {
        let f = empty(msg::READY);
        assert_eq!(&f[..2], &PROTO3);
        assert!(f.ends_with(b"N\x86."));
        assert!(result(b"\x80\x04N.").is_none());
        assert!(result(b"\x80\x03N.").is_some());
        let l = log("bqskit", 20, "hi");
        assert!(l.windows(6).any(|w| w == b"bqskit"));
    }
}
