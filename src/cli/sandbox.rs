//! placeholder until the sandbox lands
#[derive(clap::Args, Debug)]
pub struct SandboxArgs {}
pub fn run(_args: SandboxArgs) -> super::CmdResult {
    Ok(0)
}
