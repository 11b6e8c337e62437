//! Finding the Python environment BQSKit runs in: `--python PATH`, else the active virtual
//! environment (`VIRTUAL_ENV`), else `python3` on `PATH`. The interpreter is asked (once, before
//! MPI starts) for its version, `sys.path` and bqskit's version; the embedded interpreter then
//! uses that `sys.path`.

use std::path::{Path, PathBuf};
use std::process::Command;
use thiserror::Error;

/// The Python version this binary embeds (from the build).
pub const EMBEDDED_VERSION: &str = env!("BQRT_PY_VERSION");
/// The BQSKit release bqrt is tested with.
pub const BQSKIT_VERSION: &str = "1.2.1";

const SETUP_HINT: &str = "run `bash launch/setup-python.sh` and `. .venv/bin/activate` (or `pip install bqskit==1.2.1` into your environment), or pass --python PATH";

#[derive(Clone, Debug)]
pub struct PythonEnv {
    /// The interpreter's own path (`sys.executable`), for messages.
    pub executable: PathBuf,
    /// The command as chosen (`--python`, the virtual environment's, `python3`): what workers
    /// start their Python processes with, so that a site's wrapper script applies to them too.
    pub command: PathBuf,
    pub version: String,
    pub sys_path: Vec<String>,
    pub bqskit: String,
}

#[derive(Debug, Error)]
pub enum EnvError {
    #[error("{0}: no such Python interpreter; {SETUP_HINT}")]
    Missing(String),
    #[error("{0} did not run ({1}); {SETUP_HINT}")]
    Broken(String, String),
    #[error("{exe} is Python {found} but this bqrt embeds Python {EMBEDDED_VERSION}; use a Python {EMBEDDED_VERSION} environment or rebuild bqrt with PYO3_PYTHON={exe}")]
    Version { exe: String, found: String },
    #[error("bqskit is not installed for {0}; {SETUP_HINT}")]
    NoBqskit(String),
}

/// Where the interpreter comes from, for messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Flag,
    VirtualEnv,
    Path,
}

/// The interpreter to use and where that choice came from.
pub fn choose(flag: Option<&Path>) -> (PathBuf, Source) {
    if let Some(p) = flag {
        return (p.to_path_buf(), Source::Flag);
    }
    if let Some(v) = std::env::var_os("VIRTUAL_ENV").filter(|v| !v.is_empty()) {
        return (
            PathBuf::from(v).join("bin").join("python"),
            Source::VirtualEnv,
        );
    }
    (PathBuf::from("python3"), Source::Path)
}

/// Every rank runs this before MPI starts, so it imports nothing it can find without importing:
/// importing dill and reading bqskit's version through `importlib.metadata` took 0.3 s of the
/// start-up of three ranks on two cores; finding the modules and the `.dist-info` directory
/// takes a few milliseconds. (`importlib.metadata` remains the answer for other installs.)
const PROBE: &str = r#"
import sys, json, os
from importlib.util import find_spec
def version(name):
    spec = find_spec(name)
    for d in (spec.submodule_search_locations or []) if spec else []:
        site, prefix = os.path.dirname(d), name + "-"
        try:
            for e in os.listdir(site):
                if e.startswith(prefix) and e.endswith(".dist-info"):
                    return e[len(prefix):-len(".dist-info")]
        except OSError:
            pass
    if spec is None:
        return None
    try:
        from importlib import metadata
        return metadata.version(name)
    except Exception:
        return None
bq = version("bqskit") if find_spec("dill") is not None else None
print(json.dumps({"version": "%d.%d" % sys.version_info[:2], "path": [p for p in sys.path if p], "bqskit": bq, "exe": sys.executable}))
"#;

/// Ask `exe` for its version, `sys.path` and bqskit's version.
pub fn probe(exe: &Path) -> Result<PythonEnv, EnvError> {
    let name = exe.display().to_string();
    let out = match Command::new(exe).arg("-c").arg(PROBE).output() {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(EnvError::Missing(name)),
        Err(e) => return Err(EnvError::Broken(name, e.to_string())),
    };
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(EnvError::Broken(name, err.trim().to_string()));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| EnvError::Broken(name.clone(), format!("unexpected answer: {e}")))?;
    let version = v["version"].as_str().unwrap_or_default().to_string();
    if version != EMBEDDED_VERSION {
        return Err(EnvError::Version {
            exe: name,
            found: version,
        });
    }
    let Some(bqskit) = v["bqskit"].as_str() else {
        return Err(EnvError::NoBqskit(name));
    };
    let sys_path = v["path"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    Ok(PythonEnv {
        executable: v["exe"]
            .as_str()
            .map(PathBuf::from)
            .unwrap_or_else(|| exe.to_path_buf()),
        command: exe.to_path_buf(),
        version,
        sys_path,
        bqskit: bqskit.to_string(),
    })
}
