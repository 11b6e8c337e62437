//! The `bqskit` task: runs one BQSKit task (a Python coroutine) on a worker.
//!
//! The task's bytes are an envelope (see python/bqrt_worker.py) that only this worker opens.
//! The coroutine is stepped with `send`; when it awaits a `RuntimeFuture`, the matching
//! [`RawFuture`] is polled (`poll_next` when the future carries BQSKit's `_next_flag`), and the
//! results (pickled bytes) are sent back in. Children are submitted through
//! [`Ctx::submit_raw`] as `bqskit` tasks. While a step runs, the Python functions of module
//! `_bqrt` reach the task through a thread-local.

// pyo3 0.22's #[pyfunction] expansion converts PyErr into itself
#![allow(clippy::useless_conversion)]

use super::interp;
use crate::executor::{Ctx, RawChild, RawFuture};
use crate::executor::{TaskError, TaskResult};
use crate::protocol::Format;
use pyo3::exceptions::{PyKeyError, PyRuntimeError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::poll_fn;
use std::rc::Rc;

/// The registered name of BQSKit tasks.
pub const FUNCTION: &str = "bqskit";

/// The Rust side of a Python `RuntimeFuture`: the children it stands for.
struct PyFuture {
    fut: RawFuture,
    single: bool,
}

/// What a running BQSKit task's Python calls reach.
struct TaskState {
    ctx: Ctx,
    boxes: RefCell<HashMap<u64, PyFuture>>,
}

thread_local! {
    static CURRENT: RefCell<Option<Rc<TaskState>>> = const { RefCell::new(None) };
    static NEXT_BOX: Cell<u64> = const { Cell::new(1) };
}

fn current() -> PyResult<Rc<TaskState>> {
    CURRENT
        .with(|c| c.borrow().clone())
        .ok_or_else(|| PyRuntimeError::new_err("bqrt: no BQSKit task is running on this thread"))
}

/// Python log level to bqrt's 1 = error .. 5 = trace (monotone, so a record at or above the
/// job's Python level always passes the job's bqrt level).
pub fn level_to_bqrt(levelno: i64) -> u8 {
    match levelno {
        l if l >= 40 => 1,
        l if l >= 30 => 2,
        l if l >= 20 => 3,
        l if l >= 10 => 4,
        _ => 5,
    }
}

/// bqrt's level back to the Python level a client sees.
pub fn level_to_python(level: u8) -> i64 {
    match level {
        0 | 1 => 40,
        2 => 30,
        3 => 20,
        4 => 10,
        _ => 5,
    }
}

#[pyfunction]
fn submit(children: Vec<(Bound<'_, PyBytes>, String)>, single: bool) -> PyResult<u64> {
    let st = current()?;
    let raw = children
        .into_iter()
        .map(|(b, name)| RawChild {
            function: FUNCTION.to_string(),
            args: b.as_bytes().to_vec(),
            format: Format::Bincode,
            label: Some(name),
            context: Vec::new(),
        })
        .collect();
    let fut = st
        .ctx
        .submit_raw(raw)
        .map_err(|e| PyRuntimeError::new_err(format!("bqrt: submit failed: {}", e.message())))?;
    let id = NEXT_BOX.with(|n| {
        let id = n.get();
        n.set(id + 1);
        id
    });
    st.boxes.borrow_mut().insert(id, PyFuture { fut, single });
    Ok(id)
}

#[pyfunction]
fn cancel(mailbox: u64) -> PyResult<()> {
    let st = current()?;
    let Some(mb) = st.boxes.borrow_mut().remove(&mailbox) else {
        return Err(PyKeyError::new_err(mailbox));
    };
    st.ctx.cancel(mb.fut);
    Ok(())
}

#[pyfunction]
fn communicate(mailbox: u64, msg: Bound<'_, PyBytes>) -> PyResult<()> {
    let st = current()?;
    let boxes = st.boxes.borrow();
    let Some(mb) = boxes.get(&mailbox) else {
        return Err(PyKeyError::new_err(mailbox));
    };
    st.ctx
        .communicate_raw(&mb.fut, msg.as_bytes().to_vec())
        .map_err(|e| PyRuntimeError::new_err(format!("bqrt: communicate failed: {}", e.message())))
}

#[pyfunction]
fn get_messages(py: Python<'_>) -> PyResult<Vec<Bound<'_, PyBytes>>> {
    let st = current()?;
    Ok(st
        .ctx
        .take_messages_raw()
        .iter()
        .map(|m| PyBytes::new_bound(py, m))
        .collect())
}

#[pyfunction]
fn has_box(mailbox: u64) -> bool {
    current().is_ok_and(|st| st.boxes.borrow().contains_key(&mailbox))
}

#[pyfunction]
#[pyo3(name = "log")]
fn log_record(levelno: i64, name: &str, message: String) {
    if let Ok(st) = current() {
        st.ctx.log_raw(level_to_bqrt(levelno), name, message);
    }
}

#[pyfunction]
fn worker_id() -> u32 {
    current().map(|st| st.ctx.rank().0).unwrap_or(0)
}

/// bqrt's worker-side module, with the `_bqrt` module it imports registered first.
fn worker(py: Python<'_>) -> PyResult<Bound<'_, PyModule>> {
    let modules = py.import_bound("sys")?.getattr("modules")?;
    if !modules.contains("_bqrt")? {
        modules.set_item("_bqrt", native_module(py)?)?;
    }
    interp::worker(py)
}

/// The `_bqrt` module the Python side imports.
fn native_module(py: Python<'_>) -> PyResult<Bound<'_, PyModule>> {
    let m = PyModule::new_bound(py, "_bqrt")?;
    m.add_function(wrap_pyfunction!(submit, &m)?)?;
    m.add_function(wrap_pyfunction!(cancel, &m)?)?;
    m.add_function(wrap_pyfunction!(has_box, &m)?)?;
    m.add_function(wrap_pyfunction!(communicate, &m)?)?;
    m.add_function(wrap_pyfunction!(get_messages, &m)?)?;
    m.add_function(wrap_pyfunction!(log_record, &m)?)?;
    m.add_function(wrap_pyfunction!(worker_id, &m)?)?;
    Ok(m)
}

/// What the coroutine is sent next.
enum Resume {
    Start,
    All(Vec<Vec<u8>>, bool),
    Next(Vec<(usize, Vec<u8>)>),
}

enum Step {
    Done(Vec<u8>),
    Failed(String),
    Await { mailbox: u64, next: bool },
}

/// Closes the coroutine if the task is dropped before it finished (cancelled).
struct Coroutine(Option<Py<PyAny>>);

impl Drop for Coroutine {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            Python::with_gil(|py| {
                let _ = task.call_method0(py, "close");
            });
        }
    }
}

fn step(state: &Rc<TaskState>, task: &Py<PyAny>, resume: Resume) -> Step {
    CURRENT.with(|c| *c.borrow_mut() = Some(Rc::clone(state)));
    let out = Python::with_gil(|py| {
        let args = match resume {
            Resume::Start => (0, py.None()),
            Resume::All(values, single) => {
                let list = PyList::new_bound(py, values.iter().map(|v| PyBytes::new_bound(py, v)));
                (
                    1,
                    PyTuple::new_bound(py, [list.into_any(), single.into_py(py).into_bound(py)])
                        .into_any()
                        .unbind(),
                )
            }
            Resume::Next(pairs) => {
                let list = PyList::new_bound(
                    py,
                    pairs
                        .iter()
                        .map(|(i, v)| -> PyObject { (*i, PyBytes::new_bound(py, v)).into_py(py) }),
                );
                (2, list.into_any().unbind())
            }
        };
        match task.call_method1(py, "step", args) {
            Ok(r) => parse(py, r.bind(py)),
            Err(e) => Step::Failed(interp::describe(py, &e)),
        }
    });
    CURRENT.with(|c| *c.borrow_mut() = None);
    out
}

fn parse(py: Python<'_>, r: &Bound<'_, PyAny>) -> Step {
    let parsed = (|| -> PyResult<Step> {
        let kind: String = r.get_item(0)?.extract()?;
        Ok(match kind.as_str() {
            "done" => Step::Done(
                r.get_item(1)?
                    .downcast::<PyBytes>()
                    .map_err(PyErr::from)?
                    .as_bytes()
                    .to_vec(),
            ),
            "await" => Step::Await {
                mailbox: r.get_item(1)?.extract()?,
                next: r.get_item(2)?.extract()?,
            },
            _ => Step::Failed(r.get_item(1)?.extract()?),
        })
    })();
    parsed.unwrap_or_else(|e| Step::Failed(interp::describe(py, &e)))
}

/// What a worker's first BQSKit task would otherwise wait for: the interpreter, bqrt's worker
/// module and BQSKit's compiler and passes (about a second of imports). Run on a thread of its
/// own as the worker starts; a failure here is left for the first task to report.
pub fn warm_up() {
    if interp::start().is_err() {
        return;
    }
    Python::with_gil(|py| {
        let _ = worker(py);
        for m in WARM_IMPORTS {
            if let Err(e) = py.import_bound(*m) {
                log::debug!("warm-up: import {m}: {}", interp::describe(py, &e));
            }
        }
    });
}

/// The modules [`warm_up`] imports: what `bqskit.compile`'s passes need on a worker.
const WARM_IMPORTS: &[&str] = &["bqskit.compiler.compile", "bqskit.passes"];

/// Run one BQSKit task to its end.
pub async fn run(ctx: Ctx, envelope: Vec<u8>) -> TaskResult<Vec<u8>> {
    interp::start()
        .map_err(|e| TaskError::new(format!("bqrt: the embedded Python did not start: {e}")))?;
    let depth = ctx.depth();
    let created = Python::with_gil(|py| -> Result<Py<PyAny>, String> {
        let m = worker(py).map_err(|e| interp::describe(py, &e))?;
        let r = m
            .getattr("start")
            .and_then(|f| f.call1((PyBytes::new_bound(py, &envelope), depth)))
            .map_err(|e| interp::describe(py, &e))?;
        let kind: String = r
            .get_item(0)
            .and_then(|k| k.extract())
            .map_err(|e| interp::describe(py, &e))?;
        let value = r.get_item(1).map_err(|e| interp::describe(py, &e))?;
        if kind == "task" {
            Ok(value.unbind())
        } else {
            Err(value
                .extract::<String>()
                .unwrap_or_else(|_| "bqrt: the task did not start".into()))
        }
    });
    drop(envelope);
    let task = created.map_err(TaskError::new)?;
    let mut guard = Coroutine(Some(Python::with_gil(|py| task.clone_ref(py))));
    let state = Rc::new(TaskState {
        ctx,
        boxes: RefCell::new(HashMap::new()),
    });
    let mut resume = Resume::Start;
    loop {
        match step(&state, &task, resume) {
            Step::Done(bytes) => {
                guard.0 = None;
                return Ok(bytes);
            }
            Step::Failed(text) => {
                guard.0 = None;
                return Err(TaskError::new(text));
            }
            Step::Await { mailbox, next } => {
                let taken = state.boxes.borrow_mut().remove(&mailbox);
                let Some(mut mb) = taken else {
                    return Err(TaskError::new(
                        "RuntimeError: Cannot await on a canceled task.",
                    ));
                };
                if next {
                    let pairs = poll_fn(|_| mb.fut.poll_next()).await?;
                    state.boxes.borrow_mut().insert(mailbox, mb);
                    resume = Resume::Next(pairs);
                } else {
                    let values = poll_fn(|_| mb.fut.poll_all()).await?;
                    resume = Resume::All(values, mb.single);
                }
            }
        }
    }
}
