//! The compact `.ldm` model file. See SPEC.md.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("placeholder")]
    Placeholder,
}
