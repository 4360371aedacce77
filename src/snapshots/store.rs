//! Where snapshots live: MongoDB GridFS (default; bucket `archive.snapshots.bucket` in the
//! archive's database) or a directory. A snapshot is two files named by the event's id,
//! `<event_id>/source` (the frame's bytes as the camera sent them) and
//! `<event_id>/annotated` (JPEG). Writes are idempotent: a redelivered frame finds its
//! snapshot there and writes nothing.
//!
//! Retention: MongoDB's TTL indexes cannot remove GridFS chunks with their file, so the writer
//! deletes files older than `archive.retention.snapshots_days` itself (by `uploadDate`, which
//! an index serves), chunks included; a directory store removes its day folders.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use futures::{AsyncReadExt, AsyncWriteExt, TryStreamExt};
use mongodb::bson::{self, doc, Bson, Document};
use mongodb::gridfs::GridFsBucket;
use mongodb::options::{GridFsBucketOptions, IndexOptions};
use mongodb::{Collection, IndexModel};

use crate::config::Config;
use crate::contract::RiskEvent;

use super::StoreKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Source,
    Annotated,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Source => "source",
            Kind::Annotated => "annotated",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("MongoDB: {0}")]
    Mongo(#[from] mongodb::error::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Archive(#[from] crate::archive::ArchiveError),
    #[error("{0:?} is not an event id")]
    BadId(String),
}

pub enum Store {
    GridFs {
        bucket: GridFsBucket,
        files: Collection<Document>,
    },
    Directory {
        root: PathBuf,
    },
}

/// The file name of one snapshot file.
pub fn file_name(event_id: &str, kind: Kind) -> String {
    format!("{event_id}/{}", kind.as_str())
}

/// In a directory store an event id names a file: no path separators, no leading dot, no
/// control characters (a frame id with those gets no snapshot there; GridFS takes any id).
fn checked(id: &str) -> Result<&str, StoreError> {
    let ok = !id.is_empty()
        && id.len() <= 300
        && !id.starts_with('.')
        && !id.contains(['/', '\\'])
        && !id.chars().any(char::is_control);
    ok.then_some(id)
        .ok_or_else(|| StoreError::BadId(id.to_string()))
}

impl Store {
    pub async fn open(config: &Config) -> Result<Store, StoreError> {
        let c = &config.archive.snapshots;
        Ok(match c.store {
            StoreKind::Gridfs => {
                let db = crate::archive::database(&config.archive).await?;
                let bucket = db.gridfs_bucket(
                    GridFsBucketOptions::builder()
                        .bucket_name(c.bucket.clone())
                        .build(),
                );
                let files = db.collection(&format!("{}.files", c.bucket));
                Store::GridFs { bucket, files }
            }
            StoreKind::Directory => Store::Directory {
                root: c.directory.clone(),
            },
        })
    }

    /// Stores one file of an event's snapshot, unless it is there already.
    pub async fn put(&self, event: &RiskEvent, kind: Kind, bytes: &[u8]) -> Result<(), StoreError> {
        let id = event.event_id.as_str();
        let name = file_name(id, kind);
        match self {
            Store::GridFs { bucket, files } => {
                if files.find_one(doc! { "_id": &name }).await?.is_some() {
                    return Ok(());
                }
                let metadata = doc! {
                    "event_id": id,
                    "site": &event.site,
                    "camera_id": &event.camera_id,
                    "captured_at": bson::DateTime::from_millis(event.captured_at.timestamp_millis()),
                    "level": event.risk.level.as_str(),
                    "kind": kind.as_str(),
                    "content_type": content_type(bytes),
                };
                let mut upload = bucket
                    .open_upload_stream(&name)
                    .id(Bson::String(name.clone()))
                    .metadata(metadata)
                    .await?;
                let written = async {
                    upload.write_all(bytes).await?;
                    upload.close().await
                }
                .await;
                if let Err(e) = written {
                    let _ = upload.abort().await;
                    // Another writer stored the same snapshot first: that is success.
                    if files.find_one(doc! { "_id": &name }).await?.is_some() {
                        return Ok(());
                    }
                    return Err(StoreError::Io {
                        path: PathBuf::from(name),
                        source: e,
                    });
                }
                Ok(())
            }
            Store::Directory { root } => {
                let id = checked(id)?;
                let day = root.join(event.captured_at.format("%Y-%m-%d").to_string());
                let path = day.join(format!("{id}.{}", kind.as_str()));
                if tokio::fs::try_exists(&path).await.unwrap_or(false) {
                    return Ok(());
                }
                let io = |source| StoreError::Io {
                    path: path.clone(),
                    source,
                };
                tokio::fs::create_dir_all(&day).await.map_err(io)?;
                // Written beside, then renamed: a reader never sees half a file.
                let partial = day.join(format!(".{id}.{}.partial", kind.as_str()));
                tokio::fs::write(&partial, bytes).await.map_err(io)?;
                tokio::fs::rename(&partial, &path).await.map_err(io)?;
                Ok(())
            }
        }
    }

    /// One file of a snapshot; None when there is none.
    pub async fn get(&self, event_id: &str, kind: Kind) -> Result<Option<Vec<u8>>, StoreError> {
        let id = event_id;
        let name = file_name(id, kind);
        match self {
            Store::GridFs { bucket, files } => {
                if files.find_one(doc! { "_id": &name }).await?.is_none() {
                    return Ok(None);
                }
                let mut stream = bucket
                    .open_download_stream(Bson::String(name.clone()))
                    .await?;
                let mut out = Vec::new();
                stream
                    .read_to_end(&mut out)
                    .await
                    .map_err(|source| StoreError::Io {
                        path: PathBuf::from(name),
                        source,
                    })?;
                Ok(Some(out))
            }
            Store::Directory { root } => {
                let id = checked(id)?;
                let file = format!("{id}.{}", kind.as_str());
                let mut days = day_folders(root).await?;
                days.sort_by(|a, b| b.cmp(a));
                for day in days {
                    let path = day.join(&file);
                    match tokio::fs::read(&path).await {
                        Ok(bytes) => return Ok(Some(bytes)),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                        Err(source) => return Err(StoreError::Io { path, source }),
                    }
                }
                Ok(None)
            }
        }
    }

    /// Removes snapshots older than `days` (0: none); returns how many files went.
    pub async fn expire(&self, days: u32) -> Result<u64, StoreError> {
        if days == 0 {
            return Ok(0);
        }
        let cutoff = Utc::now() - chrono::Duration::days(i64::from(days));
        match self {
            Store::GridFs { bucket, files } => {
                files
                    .create_index(
                        IndexModel::builder()
                            .keys(doc! { "uploadDate": 1 })
                            .options(
                                IndexOptions::builder()
                                    .name("upload_date".to_string())
                                    .build(),
                            )
                            .build(),
                    )
                    .await?;
                let old = doc! { "uploadDate": { "$lt": bson::DateTime::from_millis(cutoff.timestamp_millis()) } };
                let ids: Vec<Bson> = files
                    .find(old)
                    .projection(doc! { "_id": 1 })
                    .await?
                    .try_collect::<Vec<Document>>()
                    .await?
                    .into_iter()
                    .filter_map(|d| d.get("_id").cloned())
                    .collect();
                let mut removed = 0;
                for id in ids {
                    bucket.delete(id).await?;
                    removed += 1;
                }
                Ok(removed)
            }
            Store::Directory { root } => {
                let mut removed = 0;
                for day in day_folders(root).await? {
                    let Some(date) = day
                        .file_name()
                        .and_then(|n| n.to_str())
                        .and_then(|n| chrono::NaiveDate::parse_from_str(n, "%Y-%m-%d").ok())
                    else {
                        continue;
                    };
                    let end_of_day: DateTime<Utc> = (date + chrono::Duration::days(1))
                        .and_hms_opt(0, 0, 0)
                        .map(|t| t.and_utc())
                        .unwrap_or(cutoff);
                    if end_of_day <= cutoff {
                        let count = std::fs::read_dir(&day).map(|d| d.count()).unwrap_or(0);
                        tokio::fs::remove_dir_all(&day)
                            .await
                            .map_err(|source| StoreError::Io {
                                path: day.clone(),
                                source,
                            })?;
                        removed += count as u64;
                    }
                }
                Ok(removed)
            }
        }
    }
}

async fn day_folders(root: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let mut out = Vec::new();
    let mut entries = match tokio::fs::read_dir(root).await {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(source) => {
            return Err(StoreError::Io {
                path: root.to_path_buf(),
                source,
            })
        }
    };
    while let Ok(Some(entry)) = entries.next_entry().await {
        if entry.file_type().await.is_ok_and(|t| t.is_dir()) {
            out.push(entry.path());
        }
    }
    Ok(out)
}

/// The MIME type of an image's bytes.
pub fn content_type(bytes: &[u8]) -> &'static str {
    match image::guess_format(bytes) {
        Ok(image::ImageFormat::Jpeg) => "image/jpeg",
        Ok(image::ImageFormat::Png) => "image/png",
        Ok(image::ImageFormat::WebP) => "image/webp",
        Ok(image::ImageFormat::Bmp) => "image/bmp",
        Ok(image::ImageFormat::Gif) => "image/gif",
        Ok(image::ImageFormat::Tiff) => "image/tiff",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_event_ids_name_files() {
        assert!(checked("demo.vtest.f0001").is_ok());
        for bad in ["", "../etc/passwd", "a/b", ".hidden", "a\nb"] {
            assert!(checked(bad).is_err(), "{bad:?}");
        }
    }
}
