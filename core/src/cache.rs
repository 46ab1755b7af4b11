//! Where fetched assets (model weights, sample photographs) live between runs.

use std::path::PathBuf;

/// The face-api npm package version whose weights and demo photographs idforge uses.
pub const FACE_API_VERSION: &str = "1.7.15";

/// The asset cache: `$IDFORGE_CACHE`, else `<user cache dir>/idforge`.
pub fn cache_dir() -> PathBuf {
    match std::env::var_os("IDFORGE_CACHE") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => dirs::cache_dir()
            .unwrap_or_else(std::env::temp_dir)
            .join("idforge"),
    }
}

/// The unpacked face-api package (`model/`, `demo/`), as `tools/fetch-assets` leaves it.
pub fn face_api_dir() -> PathBuf {
    cache_dir().join(format!("face-api-{FACE_API_VERSION}"))
}

/// The face-api directory if `tools/fetch-assets` has completed there.
pub fn face_api_dir_if_fetched() -> Option<PathBuf> {
    let dir = face_api_dir();
    dir.join(".complete").is_file().then_some(dir)
}
