//! The agent's training images: found in containerd's store, or pulled once however many instances
//! ask for them at the same time (the others wait for that pull and see its progress), and kept
//! within a size: beyond it, the least recently used images that no container uses and no instance
//! is about to start are deleted (containerd's collector then frees their content and snapshots).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::containerd::{BYTES_LABEL, Containerd, Image, ImageRecord, LAST_USED_LABEL};
use crate::registry::Registries;

/// How stale an image's last use may be before a launch records it again.
const TOUCH_EVERY_SECONDS: u64 = 60;

/// Where a pull is.
#[derive(Debug, Clone)]
pub enum Pull {
    /// Bytes fetched of the bytes to fetch (what the store lacked).
    Downloading { done: u64, total: u64 },
    /// Its outcome (`Err`: the job's FailureReason).
    Done(Result<Image, String>),
}

pub struct ImageCache {
    containerd: Arc<Containerd>,
    registries: Registries,
    /// Most bytes of pulled images to keep.
    limit_bytes: u64,
    pulls: Mutex<HashMap<String, watch::Receiver<Pull>>>,
    /// Images instances hold (from before their container exists until it is removed).
    pins: Mutex<HashMap<String, usize>>,
}

/// Keeps an image from being collected while it is held.
pub struct Pinned {
    cache: Arc<ImageCache>,
    reference: String,
}

impl Drop for Pinned {
    fn drop(&mut self) {
        let mut pins = self.cache.pins.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = pins.get_mut(&self.reference) {
            *count -= 1;
            if *count == 0 {
                pins.remove(&self.reference);
            }
        }
    }
}

pub fn now_seconds() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

impl ImageCache {
    pub fn new(containerd: Arc<Containerd>, registries: Registries, limit_bytes: u64) -> Arc<ImageCache> {
        Arc::new(ImageCache {
            containerd,
            registries,
            limit_bytes,
            pulls: Mutex::new(HashMap::new()),
            pins: Mutex::new(HashMap::new()),
        })
    }

    /// The image `reference`, pinned until the returned guard is dropped; pulled first if the
    /// store lacks it (`progress` sees the pull's). `Err` is the job's FailureReason.
    pub async fn get(
        self: &Arc<Self>,
        reference: &str,
        progress: &mut (dyn FnMut(u64, u64) + Send),
    ) -> Result<(Image, Pinned), String> {
        let pinned = self.pin(reference);
        if let Some(image) = self.containerd.image(reference).await?
            && self.is_current(&image).await
        {
            // Minutes are fine for choosing what to collect; a write per launch would not be.
            if image.last_used.is_none_or(|at| now_seconds().saturating_sub(at) >= TOUCH_EVERY_SECONDS) {
                self.touch(reference).await;
            }
            return Ok((image, pinned));
        }
        let mut pull = self.join_pull(reference);
        let outcome = loop {
            let state = pull.borrow_and_update().clone();
            match state {
                Pull::Done(outcome) => break outcome,
                Pull::Downloading { done, total } => progress(done, total),
            }
            if pull.changed().await.is_err() {
                // The pulling task ended without a word (it panicked).
                break Err(format!("InternalServerError: pulling {reference} ended unexpectedly"));
            }
        };
        Ok((outcome?, pinned))
    }

    /// Whether a cached image is the one to run: yes, unless it is a `:latest` whose tag has
    /// moved in its registry since (as Kubernetes pulls `:latest` always, other tags if absent). An
    /// unreachable registry leaves the cached one in use.
    async fn is_current(&self, image: &Image) -> bool {
        if !image.reference.ends_with(":latest") {
            return true;
        }
        match self.registries.current_digest(&image.reference).await {
            Ok(digest) => digest == image.digest,
            Err(reason) => {
                tracing::info!(image = %image.reference, %reason, "running the cached image: its registry did not say where :latest points");
                true
            }
        }
    }

    fn pin(self: &Arc<Self>, reference: &str) -> Pinned {
        *self.pins.lock().unwrap_or_else(|e| e.into_inner()).entry(reference.to_string()).or_default() += 1;
        Pinned { cache: self.clone(), reference: reference.to_string() }
    }

    /// The pull of `reference` under way, or a new one.
    fn join_pull(self: &Arc<Self>, reference: &str) -> watch::Receiver<Pull> {
        let mut pulls = self.pulls.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pull) = pulls.get(reference) {
            return pull.clone();
        }
        let (tx, rx) = watch::channel(Pull::Downloading { done: 0, total: 0 });
        pulls.insert(reference.to_string(), rx.clone());
        let (cache, reference) = (self.clone(), reference.to_string());
        // A task of its own: the pull goes on if the instance that started it is stopped.
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            tracing::info!(image = %reference, "pulling");
            let outcome = cache
                .registries
                .pull(&cache.containerd, &reference, &mut |done, total| {
                    tx.send_replace(Pull::Downloading { done, total });
                })
                .await;
            match &outcome {
                Ok(_) => tracing::info!(image = %reference, seconds = started.elapsed().as_secs_f64(), "pulled"),
                Err(reason) => tracing::warn!(image = %reference, %reason, "pull failed"),
            }
            cache.pulls.lock().unwrap_or_else(|e| e.into_inner()).remove(&reference);
            let pulled = outcome.is_ok();
            tx.send_replace(Pull::Done(outcome));
            if pulled {
                cache.collect().await;
            }
        });
        rx
    }

    async fn touch(&self, reference: &str) {
        let labels = HashMap::from([(LAST_USED_LABEL.to_string(), now_seconds().to_string())]);
        if let Err(e) = self.containerd.label_image(reference, labels).await {
            tracing::warn!(image = reference, error = %e, "recording an image's use failed");
        }
    }

    /// Deletes least recently used images beyond the size limit.
    pub async fn collect(&self) {
        let (images, in_use) = match (self.containerd.images().await, self.containerd.images_in_use().await) {
            (Ok(images), Ok(in_use)) => (images, in_use),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "listing images to collect failed");
                return;
            }
        };
        let mut held: HashSet<String> = in_use;
        held.extend(self.pins.lock().unwrap_or_else(|e| e.into_inner()).keys().cloned());
        for name in to_collect(&images, &held, self.limit_bytes) {
            match self.containerd.delete_image(&name).await {
                Ok(()) => tracing::info!(image = %name, "deleted a least recently used image (image cache limit)"),
                Err(e) => tracing::warn!(image = %name, error = %e, "deleting an image failed"),
            }
        }
    }
}

/// The images to delete so that those the agent pulled (they carry their size) fit in
/// `limit_bytes`: least recently used first, never one `held`. Imported images (no size label)
/// are the operator's and never chosen.
pub fn to_collect(images: &[ImageRecord], held: &HashSet<String>, limit_bytes: u64) -> Vec<String> {
    let label = |image: &ImageRecord, key: &str| image.labels.get(key).and_then(|v| v.parse::<u64>().ok());
    let mut pulled: Vec<(u64, u64, &str)> = images
        .iter()
        .filter_map(|i| Some((label(i, LAST_USED_LABEL).unwrap_or(0), label(i, BYTES_LABEL)?, i.name.as_str())))
        .collect();
    let mut total: u64 = pulled.iter().map(|(_, bytes, _)| bytes).sum();
    pulled.sort();
    let mut chosen = Vec::new();
    for (_, bytes, name) in pulled {
        if total <= limit_bytes {
            break;
        }
        if held.contains(name) {
            continue;
        }
        total -= bytes;
        chosen.push(name.to_string());
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(name: &str, last_used: Option<u64>, bytes: Option<u64>) -> ImageRecord {
        let mut labels = HashMap::new();
        if let Some(t) = last_used {
            labels.insert(LAST_USED_LABEL.to_string(), t.to_string());
        }
        if let Some(b) = bytes {
            labels.insert(BYTES_LABEL.to_string(), b.to_string());
        }
        ImageRecord { name: name.to_string(), labels }
    }

    #[test]
    fn least_recently_used_images_go_first_until_the_rest_fits() {
        let images =
            [image("old", Some(10), Some(50)), image("mid", Some(20), Some(50)), image("new", Some(30), Some(50))];
        assert_eq!(to_collect(&images, &HashSet::new(), 150), Vec::<String>::new());
        assert_eq!(to_collect(&images, &HashSet::new(), 100), vec!["old"]);
        assert_eq!(to_collect(&images, &HashSet::new(), 60), vec!["old", "mid"]);
        assert_eq!(to_collect(&images, &HashSet::new(), 0), vec!["old", "mid", "new"]);
    }

    #[test]
    fn held_and_imported_images_are_never_collected() {
        let images =
            [image("old", Some(10), Some(50)), image("imported", None, None), image("new", Some(30), Some(50))];
        let held = HashSet::from(["old".to_string()]);
        assert_eq!(to_collect(&images, &held, 60), vec!["new"]);
        assert_eq!(to_collect(&images, &held, 0), vec!["new"]);
        // An image without a last use is older than any used one.
        let images = [image("unknown", None, Some(50)), image("used", Some(1), Some(50))];
        assert_eq!(to_collect(&images, &HashSet::new(), 50), vec!["unknown"]);
    }
}
