fn main() {
    // The Lua hook worker is this same binary; it must not go through argument parsing.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|arg| arg == "hook-worker")
    {
        let code = codeformer_ledger::hooks::worker_main();
        std::process::exit(if code == std::process::ExitCode::SUCCESS {
            0
        } else {
            1
        });
    }
}
