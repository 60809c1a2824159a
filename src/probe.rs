//! placeholder until the probe module lands
#[derive(Debug)]
pub struct ImageSize {
    pub width: u32,
    pub height: u32,
    pub format: String,
}
#[derive(Debug)]
pub struct Probe {
    pub size: ImageSize,
    pub bytes_read: u64,
    pub content_type: Option<String>,
}
pub fn probe_url(_agent: &ureq::Agent, _url: &str) -> Result<Probe, String> {
    Err("not yet".into())
}
