//! placeholder
use crate::params::JobParams;
pub struct ManifestRow {
    pub line: usize,
    pub params: JobParams,
    pub size: Option<(u32, u32)>,
    pub key: Option<String>,
    pub tags: Vec<(String, String)>,
}
pub struct ManifestError {
    pub file: String,
    pub line: usize,
    pub field: Option<String>,
    pub message: String,
}
impl std::fmt::Display for ManifestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}
pub struct Manifest {
    pub rows: Vec<ManifestRow>,
    pub errors: Vec<ManifestError>,
}
pub fn read_manifest(_p: &std::path::Path, _d: &JobParams) -> Result<Manifest, ManifestError> {
    todo!()
}
