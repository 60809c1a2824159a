//! `completions` and `man`: generated from the same clap definitions as `--help`.

use super::{Cli, CmdResult};
use clap::CommandFactory;

/// Print a shell completion script.
///
/// Examples:
///   codeformer-ledger completions bash > ~/.local/share/bash-completion/completions/codeformer-ledger
///   codeformer-ledger completions zsh > ~/.zfunc/_codeformer-ledger
///   codeformer-ledger completions fish > ~/.config/fish/completions/codeformer-ledger.fish
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Print the manual page (roff).
///
/// Example:
///   codeformer-ledger man > codeformer-ledger.1 && man ./codeformer-ledger.1
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct ManArgs {}

pub fn completions(args: CompletionsArgs) -> CmdResult {
    let mut command = Cli::command();
    clap_complete::generate(
        args.shell,
        &mut command,
        "codeformer-ledger",
        &mut std::io::stdout(),
    );
    Ok(codeformer_ledger::exit::DONE)
}

pub fn man(_args: ManArgs) -> CmdResult {
    let command = Cli::command();
    let mut out = std::io::stdout().lock();
    clap_mangen::Man::new(command.clone()).render(&mut out)?;
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        let sub = sub
            .clone()
            .name(format!("codeformer-ledger-{}", sub.get_name()));
        clap_mangen::Man::new(sub).render(&mut out)?;
    }
    Ok(codeformer_ledger::exit::DONE)
}
