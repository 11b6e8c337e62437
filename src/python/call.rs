//! The `python` task: a native client's call of a Python function on a worker, in the worker's
//! supervised Python process, with the same isolation and limits as a BQSKit task.
//!
//! Arguments (JSON): `{"call": "package.module.function", "args": [...], "kwargs": {...},
//! "path": ["dir", ...]}` (`path` is added to the process's `sys.path`; `module:Class.method`
//! names a method). The function may be a coroutine and use BQSKit's `get_runtime()` to submit
//! children. Its result comes back as JSON:
//!
//! ```sh
//! bqrt submit python '{"call": "math.factorial", "args": [20]}'
//! ```

use super::task;
use crate::executor::{Ctx, TaskError, TaskResult};
use crate::protocol::Format;
use serde::Deserialize;

/// The registered name of the task.
pub const FUNCTION: &str = "python";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Call {
    call: String,
    #[serde(default)]
    args: Vec<serde_json::Value>,
    #[serde(default)]
    kwargs: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    path: Vec<String>,
}

const USAGE: &str = r#"expected JSON {"call": "package.module.function", "args": [...], "kwargs": {...}, "path": ["dir", ...]}"#;

fn parse(args: &[u8], format: Format) -> Result<Call, String> {
    if format != Format::Json {
        return Err(format!("{USAGE} (got {format:?} bytes)"));
    }
    let call: Call = serde_json::from_slice(args).map_err(|e| format!("{USAGE}: {e}"))?;
    let name = call.call.trim();
    let ok = !name.is_empty()
        && name.contains(['.', ':'])
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '_' | '.' | ':'));
    if !ok {
        return Err(format!(
            "{USAGE}: 'call' must name a module's function, like \"math.factorial\" (got {:?})",
            call.call
        ));
    }
    Ok(call)
}

/// Whether a job of `python(args)` can start (the gateway asks before it takes the job).
pub fn check(args: &[u8], format: Format) -> Result<(), String> {
    parse(args, format).map(|_| ())
}

/// Run the call to its end.
pub async fn run(ctx: Ctx, args: Vec<u8>, format: Format) -> TaskResult<Vec<u8>> {
    let call = parse(&args, format).map_err(TaskError::new)?;
    let (level, max_depth) = match ctx.log_spec() {
        Some((spec, _)) if spec.level > 0 => (
            super::level::to_python(spec.level),
            spec.max_depth.map_or(-1, i64::from),
        ),
        _ => (100, -1),
    };
    let header = serde_json::json!({
        "path": call.path,
        "level": level,
        "max_depth": max_depth,
        "context": {},
    });
    let body = serde_json::json!({
        "call": call.call.trim(),
        "args": call.args,
        "kwargs": call.kwargs,
    });
    let header = header.to_string();
    let mut envelope = vec![b'J'];
    envelope.extend_from_slice(&(header.len() as u32).to_le_bytes());
    envelope.extend_from_slice(header.as_bytes());
    envelope.extend_from_slice(body.to_string().as_bytes());
    task::run(ctx, envelope).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_checked_at_submit_and_errors_say_the_shape() {
        assert!(check(br#"{"call": "math.factorial", "args": [5]}"#, Format::Json).is_ok());
        assert!(check(
            br#"{"call": "m:C.f", "kwargs": {"a": 1}, "path": ["/x"]}"#,
            Format::Json
        )
        .is_ok());
        for bad in [
            &br#"{"args": []}"#[..],
            br#"{"call": "factorial"}"#,
            br#"{"call": "os.system('x')"}"#,
            br#"{"call": "m.f", "other": 1}"#,
            br#"[1]"#,
            b"not json",
        ] {
            let e = check(bad, Format::Json).unwrap_err();
            assert!(e.starts_with("expected JSON {\"call\""), "{e}");
        }
        assert!(check(b"{}", Format::Bincode).is_err());
    }
}
