//! Native tasks: the registry of named `async fn`s and the task error type.
//!
//! A task is `async fn(Ctx, Args) -> Result<Output, TaskError>` with serde `Args`/`Output`.
//! Arguments travel as bincode between tasks and as JSON from the command line or a client;
//! the registry wraps each function so it decodes and encodes whichever format its caller used.

use super::Ctx;
use crate::protocol::{Format, Rank};
use serde::{de::DeserializeOwned, Serialize};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// A task's failure: a message that reaches the job's owner with the task's name and address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskError(String);

impl TaskError {
    pub fn new(message: impl Into<String>) -> TaskError {
        TaskError(message.into())
    }
    pub fn message(&self) -> &str {
        &self.0
    }
    pub fn into_message(self) -> String {
        self.0
    }
}

/// Any error converts, so `?` works inside tasks.
impl<E: std::error::Error> From<E> for TaskError {
    fn from(e: E) -> TaskError {
        TaskError(e.to_string())
    }
}

/// Result of a task or of a runtime call inside one.
pub type TaskResult<T> = Result<T, TaskError>;

pub(crate) type BoxFuture = Pin<Box<dyn Future<Output = Result<Vec<u8>, TaskError>>>>;
type Erased = dyn Fn(Ctx, Vec<u8>, Format) -> BoxFuture + Send + Sync;
/// Whether arguments decode into a task's argument type.
type Check = dyn Fn(&[u8], Format) -> Result<(), String> + Send + Sync;

/// Named task functions. Build one, add tasks, hand it to `bqrt::cli::main`.
#[derive(Clone, Default)]
pub struct Registry {
    tasks: BTreeMap<String, Arc<Erased>>,
    /// Argument checks of typed tasks (raw tasks check their own bytes when they run).
    checks: BTreeMap<String, Arc<Check>>,
    /// Work a worker starts once, as it starts (a process importing a task's libraries): see
    /// [`Registry::warm_up`].
    warm_ups: Vec<Arc<dyn Fn(Rank) + Send + Sync>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Run `f(rank)` once on every worker's executor thread as it starts, before its first task, so
    /// that what the tasks will need is being prepared by the time they arrive. It must return
    /// quickly: slow preparation belongs in a process or thread it starts (the BQSKit task
    /// starts its Python process here, which imports BQSKit while the runtime comes up).
    pub fn warm_up(mut self, f: impl Fn(Rank) + Send + Sync + 'static) -> Registry {
        self.warm_ups.push(Arc::new(f));
        self
    }

    /// Run the warm-ups (a worker's executor thread, as it starts).
    pub(crate) fn start_warm_ups(&self, rank: Rank) {
        self.warm_ups.iter().for_each(|f| f(rank));
    }

    /// Register `f` under `name` (replacing any task of that name).
    pub fn task<A, R, F, Fut>(mut self, name: &str, f: F) -> Registry
    where
        A: DeserializeOwned + 'static,
        R: Serialize + 'static,
        F: Fn(Ctx, A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = TaskResult<R>> + 'static,
    {
        let f = Arc::new(f);
        let name_owned = name.to_string();
        let erased = move |ctx: Ctx, args: Vec<u8>, format: Format| -> BoxFuture {
            let f = Arc::clone(&f);
            let name = name_owned.clone();
            Box::pin(async move {
                let args: A = decode(&args, format).map_err(|e| {
                    TaskError::new(format!("arguments of task '{name}' do not decode: {e}"))
                })?;
                let out = f(ctx, args).await?;
                encode(&out, format).map_err(|e| {
                    TaskError::new(format!("result of task '{name}' does not encode: {e}"))
                })
            })
        };
        self.tasks.insert(name.to_string(), Arc::new(erased));
        let check = |args: &[u8], format: Format| decode::<A>(args, format).map(drop);
        self.checks.insert(name.to_string(), Arc::new(check));
        self
    }

    /// Register a task that takes and returns encoded bytes itself (for task kinds that are not
    /// Rust functions, like Python coroutines). The result is passed on as is.
    pub fn task_raw<F, Fut>(mut self, name: &str, f: F) -> Registry
    where
        F: Fn(Ctx, Vec<u8>, Format) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = TaskResult<Vec<u8>>> + 'static,
    {
        let f = Arc::new(f);
        let erased = move |ctx: Ctx, args: Vec<u8>, format: Format| -> BoxFuture {
            let f = Arc::clone(&f);
            Box::pin(async move { f(ctx, args, format).await })
        };
        self.tasks.insert(name.to_string(), Arc::new(erased));
        self.checks.remove(name);
        self
    }

    /// Check the arguments of the raw task `name` at submit, as typed tasks' are (`check`
    /// returns the error a client is told).
    pub fn check_raw(
        mut self,
        name: &str,
        check: impl Fn(&[u8], Format) -> Result<(), String> + Send + Sync + 'static,
    ) -> Registry {
        self.checks.insert(name.to_string(), Arc::new(check));
        self
    }

    /// Whether a job of `name(args)` can start here: the task exists and, for a typed task,
    /// its arguments decode into its argument type. The error names the task and the fix.
    pub fn check(&self, name: &str, args: &[u8], format: Format) -> Result<(), String> {
        if !self.tasks.contains_key(name) {
            let known: Vec<&str> = self.names().collect();
            return Err(format!(
                "no task named '{name}' in this bqrt build (known: {})",
                known.join(", ")
            ));
        }
        match self.checks.get(name) {
            Some(check) => check(args, format)
                .map_err(|e| format!("arguments of task '{name}' do not decode: {e}")),
            None => Ok(()),
        }
    }

    /// Names of the registered tasks.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tasks.keys().map(String::as_str)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tasks.contains_key(name)
    }

    pub(crate) fn start(&self, name: &str, ctx: Ctx, args: Vec<u8>, format: Format) -> BoxFuture {
        match self.tasks.get(name) {
            Some(f) => f(ctx, args, format),
            None => {
                let known: Vec<&str> = self.names().collect();
                let msg = format!(
                    "no task named '{name}' in this bqrt build (known: {})",
                    known.join(", ")
                );
                Box::pin(async move { Err(TaskError::new(msg)) })
            }
        }
    }
}

/// Encode a value in `format`.
pub fn encode<T: Serialize + ?Sized>(v: &T, format: Format) -> Result<Vec<u8>, String> {
    match format {
        Format::Bincode => {
            bincode::serde::encode_to_vec(v, bincode::config::standard()).map_err(|e| e.to_string())
        }
        Format::Json => serde_json::to_vec(v).map_err(|e| e.to_string()),
    }
}

/// Decode a value from `format`.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], format: Format) -> Result<T, String> {
    match format {
        Format::Bincode => bincode::serde::decode_from_slice(bytes, bincode::config::standard())
            .map(|(v, _)| v)
            .map_err(|e| e.to_string()),
        Format::Json => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
    }
}
