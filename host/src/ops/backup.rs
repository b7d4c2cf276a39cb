//! `GET /components/{name}/backup` and `PUT` on it: a component's database
//! copied out while it serves, and a copy put back whole. Both go through
//! a file beside the databases, never through memory: the copy is taken
//! into one and streamed from it; a restore is received into one, checked,
//! then copied in (see [`Database::restore_from`]).

use std::sync::Arc;

use bytes::BytesMut;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use tokio::io::AsyncReadExt;

use super::api;
use crate::capabilities::sqlite::{AppendError, Database, RestoreError, Restored, SCRATCH_PREFIXES};
use crate::serving::body::{BodyPace, read_body_into};
use crate::serving::{BoxError, HttpResponse, ResponseBody, problem};

/// How much of a backup is read from its file at a time.
const CHUNK_BYTES: usize = 64 << 10;

/// Removes the files of copies a host stopped before it removed them (a
/// crash during a backup, say). Run at start, before any copy begins.
pub fn sweep(data_dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(data_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if SCRATCH_PREFIXES.iter().any(|p| name.starts_with(p)) {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => tracing::info!(file = %name, "removed a copy left by an earlier run"),
                Err(e) => tracing::warn!(file = %name, "cannot remove a copy left by an earlier run: {e}"),
            }
        }
    }
}

/// The database of component `name`, copied now, as the response's body.
pub async fn download(db: Arc<Database>, name: &str) -> HttpResponse {
    let failed = |e: &dyn std::fmt::Display| {
        tracing::warn!(component = %name, "backup failed: {e}");
        problem::response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "backup-failed",
            "The backup failed",
            format!("{name}: {e}"),
        )
    };
    // The blocking task owns the file: if the client goes away meanwhile,
    // it is still removed once the copy is done.
    let copied = tokio::task::spawn_blocking(move || {
        let scratch = db.scratch_file(SCRATCH_PREFIXES[0])?;
        let bytes = db.backup_to(scratch.path())?;
        // Opened again, then unlinked: the copy lives as long as the
        // response reads it.
        let file = scratch.reopen()?;
        anyhow::Ok((file, bytes))
    })
    .await;
    let (file, bytes) = match copied {
        Ok(Ok(copied)) => copied,
        Ok(Err(e)) => return failed(&format!("{e:#}")),
        Err(e) => return failed(&e),
    };
    tracing::info!(component = %name, bytes, "backup taken");
    let mut response = Response::new(file_body(tokio::fs::File::from_std(file)));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(api::BACKUP_MEDIA_TYPE));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes));
    if let Ok(disposition) = HeaderValue::from_str(&format!("attachment; filename=\"{name}.sqlite3\"")) {
        headers.insert(header::CONTENT_DISPOSITION, disposition);
    }
    response
}

/// The body of a file, read as the client takes it.
fn file_body(file: tokio::fs::File) -> ResponseBody {
    let chunks = futures::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut chunk = BytesMut::with_capacity(CHUNK_BYTES);
        match file.read_buf(&mut chunk).await {
            Ok(0) => None,
            Ok(_) => Some((Ok(Frame::data(chunk.freeze())), Some(file))),
            // The body ends with the error; the client sees a cut response.
            Err(e) => Some((Err(BoxError::from(e)), None)),
        }
    });
    StreamBody::new(chunks).boxed_unsync()
}

/// Receives a database for `db` into a file beside it, within `limit`
/// bytes and `pace`.
pub async fn receive(
    db: &Database,
    headers: &http::HeaderMap,
    body: Incoming,
    limit: usize,
    pace: BodyPace,
) -> Result<tempfile::NamedTempFile, HttpResponse> {
    let cannot_keep = |e: std::io::Error| {
        problem::response(
            StatusCode::INSUFFICIENT_STORAGE,
            "cannot-store-body",
            "Cannot keep the database sent",
            e.to_string(),
        )
    };
    let scratch = db.scratch_file(SCRATCH_PREFIXES[1]).map_err(cannot_keep)?;
    let file = scratch.reopen().map_err(cannot_keep)?;
    let mut file = tokio::fs::File::from_std(file);
    read_body_into(body, headers, limit, pace, &mut file)
        .await
        .map_err(|refusal| refusal.into_response())?;
    file.sync_all().await.map_err(cannot_keep)?;
    Ok(scratch)
}

/// The admin API's answer to a restore of `name`.
pub fn restored(name: &str, outcome: Result<Restored, RestoreError>) -> HttpResponse {
    match outcome {
        Ok(restored) => {
            tracing::info!(component = %name, bytes = restored.bytes, tables = restored.tables, "database restored");
            let answer = api::Restored {
                component: name.to_string(),
                bytes: restored.bytes,
                tables: restored.tables,
            };
            api::json_response(StatusCode::OK, &answer)
        }
        Err(error) => {
            let (status, kind, title) = match &error {
                RestoreError::Unusable(_) => (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "bad-database",
                    "Not a database this component can take",
                ),
                RestoreError::TooLarge(_) => (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "database-too-large",
                    "The database is over the component's limit",
                ),
                RestoreError::Busy => (StatusCode::SERVICE_UNAVAILABLE, "busy", "The database is busy"),
                RestoreError::Unwritten(AppendError::Unavailable(_)) => (
                    StatusCode::BAD_GATEWAY,
                    "outcome-unknown",
                    "The replicated log did not answer; the restore may or may not have taken place",
                ),
                RestoreError::Unwritten(_) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not-writable",
                    "The replicated database cannot be written here now",
                ),
                RestoreError::Failed(_) | RestoreError::Logged(..) => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "restore-failed",
                    "The restore failed",
                ),
            };
            tracing::warn!(component = %name, "restore refused: {error}");
            let changed = match &error {
                RestoreError::Unwritten(AppendError::Unavailable(_)) | RestoreError::Logged(..) => "",
                _ => "nothing changed: ",
            };
            let response = problem::response(status, kind, title, format!("{changed}{name}: {error}"));
            match error {
                RestoreError::Busy | RestoreError::Unwritten(_) => problem::retry_soon(response),
                _ => response,
            }
        }
    }
}
