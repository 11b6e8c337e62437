//! The `bqrt` binary: the built-in tasks behind the command line.

fn main() -> std::process::ExitCode {
    bqrt::cli::main(bqrt::Registry::with_builtins())
}
