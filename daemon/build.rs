//! Records `git describe` as BERTH_GIT_REVISION ("unknown" outside a git checkout). It deliberately does not
//! rerun on every commit (that would rebuild berthd whenever anyone commits); set BERTH_GIT_REVISION to override.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=BERTH_GIT_REVISION");
    let rev = std::env::var("BERTH_GIT_REVISION").ok().unwrap_or_else(|| {
        std::process::Command::new("git")
            .args(["describe", "--always", "--dirty", "--tags"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "unknown".to_string())
    });
    println!("cargo:rustc-env=BERTH_GIT_REVISION={rev}");
}
