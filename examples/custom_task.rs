//! A binary with its own task: build it on the library, then run it like `bqrt`:
//!
//! ```sh
//! cargo build --release --example custom_task
//! mpirun -n 4 target/release/examples/custom_task run word_lengths '["a","bb","ccc"]'
//! ```

use bqrt::{Ctx, Registry, TaskResult};
use serde::Serialize;

#[derive(Serialize)]
struct Summary {
    total: usize,
    longest: String,
}

/// Map one child per word, then combine.
async fn word_lengths(ctx: Ctx, words: Vec<String>) -> TaskResult<Summary> {
    let lengths: Vec<usize> = ctx.map("word_length", words.clone())?.await?;
    let longest = words
        .iter()
        .zip(&lengths)
        .max_by_key(|(_, n)| **n)
        .map(|(w, _)| w.clone())
        .unwrap_or_default();
    Ok(Summary {
        total: lengths.iter().sum(),
        longest,
    })
}

async fn word_length(_ctx: Ctx, word: String) -> TaskResult<usize> {
    Ok(word.chars().count())
}

fn main() -> std::process::ExitCode {
    let registry = Registry::with_builtins()
        .task("word_lengths", word_lengths)
        .task("word_length", word_length);
    bqrt::cli::main(registry)
}
