//! Build script: with the `python` feature, record where libpython lives so the binary finds it
//! at run time (an rpath), and which Python version it embeds (checked against `--python`).

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "python")]
    python();
}

#[cfg(feature = "python")]
fn python() {
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
    let cfg = pyo3_build_config::get();
    if let Some(dir) = &cfg.lib_dir {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
    println!(
        "cargo:rustc-env=BQRT_PY_VERSION={}.{}",
        cfg.version.major, cfg.version.minor
    );
}
