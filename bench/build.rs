//! Embeds libtorch's library directory as an rpath so tests and binaries run without LD_LIBRARY_PATH.
fn main() {
    // torch-sys declares `links = "tch"` and exports `cargo:libtorch_lib=...`.
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
