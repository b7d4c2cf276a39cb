//! Where the admin token comes from: the config, the environment, or a
//! file that the host (never a client) creates with a random token.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;

/// Where the admin token comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum TokenSource {
    /// Written in the config.
    Literal(String),
    /// Read from this environment variable.
    Env(String),
    /// Read from this file, which the host creates with a random token when
    /// it does not exist.
    File(PathBuf),
}

/// Shorter tokens are refused: they could be guessed.
pub const MIN_TOKEN_LEN: usize = 16;

/// Whether resolving a token may create its file.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum TokenFile {
    /// The host creates the file with a random token when it is missing.
    Create,
    /// Clients only read it.
    ReadOnly,
}

/// The admin token: from the config, the environment, or a file, which the
/// host (never a client) creates with a random token on first use.
pub fn resolve_token(source: &TokenSource, file: TokenFile) -> anyhow::Result<String> {
    match source {
        TokenSource::Literal(token) => Ok(token.clone()),
        TokenSource::Env(var) => {
            let token = std::env::var(var).with_context(|| format!("the admin token variable {var} is not set"))?;
            anyhow::ensure!(
                token.len() >= MIN_TOKEN_LEN,
                "the admin token in {var} is shorter than 16 characters"
            );
            Ok(token)
        }
        TokenSource::File(path) => {
            if let Ok(token) = std::fs::read_to_string(path) {
                let token = token.trim().to_string();
                anyhow::ensure!(
                    token.len() >= MIN_TOKEN_LEN,
                    "the admin token in {} is shorter than 16 characters",
                    path.display()
                );
                return Ok(token);
            }
            anyhow::ensure!(
                file == TokenFile::Create,
                "no admin token in {}: start the host once to create it, pass --data-dir if the host was started with one, or pass --token",
                path.display()
            );
            let mut bytes = [0u8; 32];
            getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness for the admin token: {e}"))?;
            let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let mut file = std::fs::OpenOptions::new();
            file.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut file, 0o600);
            let mut file = file
                .open(path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            writeln!(file, "{token}")?;
            tracing::info!(path = %path.display(), "wrote a new admin token");
            Ok(token)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_never_create_the_token_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.token");
        let source = TokenSource::File(path.clone());
        assert!(resolve_token(&source, TokenFile::ReadOnly).is_err());
        assert!(!path.exists());
        let token = resolve_token(&source, TokenFile::Create).unwrap();
        assert_eq!(resolve_token(&source, TokenFile::ReadOnly).unwrap(), token);
    }
}
