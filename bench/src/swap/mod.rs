//! `cargo xtask bench swap`: zero-downtime hot swap on the shop, served by the release host on
//! the production backends (PostgreSQL, Redis, NATS JetStream) with its admin API on.
//!
//! 1. **Upload → serving**, for each of the shop's components (account, catalog, order,
//!    payment, notification, gateway), `--repeats` times each:
//!    - *compiled*: the component's .wasm with a custom section appended (name `agora-bench`,
//!      a random nonce as payload), so its bytes are new and the compile cache misses;
//!    - *from cache*: then the original bytes again, which the host compiled (or read from its
//!      cache) when it started, so the compile cache hits — checked: the answer must say
//!      `"compiled": false`.
//!
//!    Timed from sending `PUT /admin/components/{name}` to its 200 (the host answers once the
//!    new version is current), and to the answer of the component's probe request sent right
//!    after it on a kept connection (the first request the new version serves); the host's own
//!    `validation_ms` is shown beside. After each swap the admin API must name the uploaded
//!    digest as current.
//! 2. **A product read while components are swapped.** The cached `GET /api/products/{id}`
//!    (every answer must be a 200 with `x-cache: hit`, as in `bench shop`) by `--connections`
//!    closed-loop connections for `--seconds`, in four phases: no swaps; the catalog (which
//!    serves the read) swapped every `--swap-every-ms` between two versions already in the
//!    compile cache; the order component swapped the same way (it plays no part in the read);
//!    the catalog switched between the same two versions by `POST …/rollback` (the switch
//!    alone, no validation).
//!    The phases alternate for `--rounds` rounds; each phase's rounds are pooled. Any failed
//!    request fails the benchmark, after the table is printed.
//!
//! The nonce versions' compile-cache entries are deleted after the run; the originals' are kept
//! (the folder is target/bench-swap/data).
//!
//! The parts: [`upload`] (upload → serving), [`under_load`] (the product read while
//! components are swapped), [`fleet`] (`agora deploy` on two replicas); [`admin`] is the
//! host's admin API, [`fixture`] the probes and what they need in the shop, and [`nonce`]
//! makes a version's bytes new.

mod admin;
mod fixture;
mod fleet;
mod nonce;
mod under_load;
mod upload;

use crate::harness::backends::{BackendUrls, check_backends};
use crate::harness::process::Host;
use crate::harness::shop_host::{host_command, shop_manifest};
use crate::harness::stats::Machine;
use crate::{cargo, components, target_dir};
use admin::AdminApi;
use anyhow::{Context as _, bail};
use bytes::Bytes;
use fixture::{Fixture, PROBES, index_of};
use nonce::{remove_cache_entries, with_nonce};
use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use under_load::{print_phases, under_swaps};
use upload::{print_swaps, upload_to_serving};

#[derive(clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    backends: BackendUrls,
    /// Upload → serving: swaps measured per component and kind (compiled, from the cache).
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Product read: concurrent keep-alive connections.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Product read: seconds measured per phase and round.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Product read: rounds of the four phases (no swaps; catalog, order uploaded; catalog
    /// rolled back).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Product read: milliseconds between the starts of two swaps.
    #[arg(long, default_value_t = 200)]
    swap_every_ms: u64,
}

pub(crate) fn run(args: &Args) -> anyhow::Result<()> {
    let machine = Machine::observe();
    let work = target_dir().join("bench-swap");
    std::fs::create_dir_all(&work)?;
    // The client side: one thread, as in `bench shop`.
    let client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    client.block_on(check_backends(&args.backends, &work))?;

    let built = components::build_all()?;
    let mut wasm = Vec::new();
    for probe in &PROBES {
        let path = &built
            .iter()
            .find(|c| c.name == probe.component)
            .with_context(|| format!("no component named {} was built", probe.component))?
            .path;
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        wasm.push(Bytes::from(bytes));
    }
    eprintln!("xtask: building agora (release)");
    crate::run(cargo().args(["build", "--release", "--package", "agora-host"]))?;

    let names: Vec<&str> = PROBES.iter().map(|p| p.component).collect();
    let (manifest, auth) = shop_manifest(&work, &names)?;
    let (mut command, signer) = host_command(&args.backends, &manifest, &work, "data", auth)?;
    let token = format!("bench-swap-{}", uuid::Uuid::new_v4().simple());
    command
        .args(["--admin-listen", "127.0.0.1:0"])
        .env("AGORA_ADMIN_TOKEN", &token);
    eprintln!(
        "xtask: starting agora with the shop ({}) and its admin API",
        names.join(", ")
    );
    let (mut host, addr, admin_addr) = spawn_with_admin(&mut command)?;
    let admin = AdminApi {
        addr: admin_addr,
        token,
    };

    let mut nonce_digests = Vec::new();
    let outcome = client.block_on(async {
        eprintln!("xtask: creating a product and a paid order (for the probes and the load)");
        let fixture = Fixture::create(&addr, &signer).await?;
        let swaps =
            upload_to_serving(args, &addr, &admin, &fixture, &wasm, &mut nonce_digests).await?;
        let catalog = wasm[index_of("catalog")].clone();
        let order = wasm[index_of("order")].clone();
        let pairs = [("catalog", catalog), ("order", order)];
        let phases = under_swaps(args, &addr, &admin, &fixture, pairs, &mut nonce_digests).await?;
        anyhow::Ok((swaps, phases))
    });
    host.stop();
    remove_cache_entries(&work.join("data/compiled"), &nonce_digests);
    let (swaps, phases) = outcome?;
    eprintln!("xtask: fleet: two replicas, `agora deploy` → both serving");
    let fleet = fleet::run(&args.backends.nats_url, args.repeats, |bytes| {
        with_nonce(bytes).to_vec()
    })?;
    println!();
    println!("{}", machine.line());
    println!();
    print_swaps(args, &swaps);
    println!();
    print_phases(args, &phases);
    println!();
    fleet::print(&fleet);
    let failed: u64 = phases.iter().map(|p| p.report.errors).sum();
    if failed > 0 {
        bail!(
            "{failed} requests failed during the product read (see above): a swap must cost none"
        );
    }
    Ok(())
}

/// Starts the host and reads the lines it prints first: `agora listening on http://ADDR` and
/// `agora admin API on http://ADDR`. The rest of its stdout is read on a thread of its own, so
/// the host never writes to a closed pipe.
fn spawn_with_admin(command: &mut Command) -> anyhow::Result<(Host, String, String)> {
    // stderr is inherited: the host's errors show in the benchmark's output.
    let child = command.stdout(Stdio::piped()).spawn();
    let mut host = Host(Some(
        child.with_context(|| format!("cannot start {command:?}"))?,
    ));
    let stdout = host.0.as_mut().and_then(|child| child.stdout.take());
    let mut lines = BufReader::new(stdout.context("no stdout")?).lines();
    let (mut addr, mut admin) = (None, None);
    while addr.is_none() || admin.is_none() {
        let Some(line) = lines.next().transpose()? else {
            bail!("the host stopped before printing both its addresses (see its errors above)");
        };
        let found = line.split_once("http://").map(|(_, a)| a.trim().to_owned());
        if line.starts_with("agora admin API on ") {
            admin = found;
        } else if line.starts_with("agora listening on ") {
            addr = found;
        }
    }
    std::thread::spawn(move || lines.for_each(drop));
    Ok((host, addr.unwrap_or_default(), admin.unwrap_or_default()))
}
