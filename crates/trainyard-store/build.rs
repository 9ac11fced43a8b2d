// `sqlx::migrate!` embeds the migrations at compile time, but cargo does not know it reads the
// directory: without this a migration added later is left out of an incremental build.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
