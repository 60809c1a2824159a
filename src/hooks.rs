//! placeholder
pub fn worker_main() -> std::process::ExitCode {
    std::process::ExitCode::SUCCESS
}
