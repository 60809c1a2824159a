//! placeholder
#[derive(clap::Args, Debug)]
pub struct DemoArgs {}
pub fn run(_g: &super::Global, _args: DemoArgs) -> super::CmdResult {
    Ok(0)
}
