//! The embedded interpreter of rank 0: started once on first use, with the Python
//! environment's `sys.path` and bqrt's frame decoder (compiled into the binary, so nothing has
//! to be installed next to it). It decodes the BQSKit client frames that [`super::unpickle`]
//! leaves to it (none of those BQSKit's client sends); tasks never run in it (they run in each
//! worker's supervised process, [`super::child`]).

use super::env::PythonEnv;
use pyo3::prelude::*;
use pyo3::sync::GILOnceCell;
use std::sync::OnceLock;

const CODEC_SRC: &str = include_str!("../../python/bqrt_codec.py");

static ENV: OnceLock<PythonEnv> = OnceLock::new();
static STARTED: OnceLock<Result<(), String>> = OnceLock::new();
static CODEC: GILOnceCell<Py<PyModule>> = GILOnceCell::new();

/// Remember the environment every later start-up uses (called before MPI starts).
pub fn set_env(env: PythonEnv) {
    let _ = ENV.set(env);
}

/// The environment in use, if one was set.
pub fn env() -> Option<&'static PythonEnv> {
    ENV.get()
}

/// Start the interpreter (once); later calls return the first outcome.
pub fn start() -> Result<(), String> {
    STARTED
        .get_or_init(|| {
            pyo3::prepare_freethreaded_python();
            Python::with_gil(|py| setup(py).map_err(|e| describe(py, &e)))
        })
        .clone()
}

fn setup(py: Python<'_>) -> PyResult<()> {
    let sys = py.import_bound("sys")?;
    let path = sys.getattr("path")?;
    if let Some(env) = ENV.get() {
        for p in &env.sys_path {
            if !path.contains(p)? {
                path.call_method1("append", (p,))?;
            }
        }
    }
    Ok(())
}

fn load<'py>(
    py: Python<'py>,
    cell: &GILOnceCell<Py<PyModule>>,
    src: &str,
    name: &str,
) -> PyResult<Bound<'py, PyModule>> {
    let m = cell.get_or_try_init(py, || {
        PyModule::from_code_bound(py, src, &format!("<bqrt>/{name}.py"), name).map(|m| m.unbind())
    })?;
    Ok(m.bind(py).clone())
}

/// bqrt's frame decoder for rank 0 (python/bqrt_codec.py).
pub fn codec(py: Python<'_>) -> PyResult<Bound<'_, PyModule>> {
    load(py, &CODEC, CODEC_SRC, "bqrt_codec")
}

/// A Python exception as text, with its traceback when it has one.
pub fn describe(py: Python<'_>, e: &PyErr) -> String {
    let tb = e
        .traceback_bound(py)
        .and_then(|tb| tb.format().ok())
        .unwrap_or_default();
    format!("{tb}{e}")
}
