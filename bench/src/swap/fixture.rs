//! What `bench swap` asks the shop: each component's probe (a request it answers cheaply),
//! and the fixture the probes and the load need (tokens, a product, a paid order).

use crate::harness::client::Client;
use crate::harness::shop_host::{Signer, create_product, order_body};
use anyhow::{Context as _, bail};
use http::{Method, StatusCode};
use std::time::{Duration, Instant};

/// A request a component answers cheaply; a 200 means it serves.
pub(super) struct Probe {
    pub(super) component: &'static str,
    pub(super) method: Method,
    /// `{order}` stands for the id of the fixture's order.
    pub(super) path: &'static str,
    pub(super) as_who: Who,
    /// A JSON body.
    pub(super) body: Option<&'static str>,
}

/// Whose token a request carries.
#[derive(Clone, Copy)]
pub(super) enum Who {
    /// None (a public route).
    Anyone,
    /// The fixture's customer (roles `USER`).
    Customer,
    /// An admin (roles `USER`, `ADMIN`).
    Admin,
}

/// agora.toml's shop, each component with its probe.
pub(super) static PROBES: [Probe; 6] = [
    Probe {
        component: "account",
        method: Method::GET,
        path: "/api/accounts?page_size=1",
        as_who: Who::Admin,
        body: None,
    },
    Probe {
        component: "catalog",
        method: Method::GET,
        path: "/api/products?page_size=1",
        as_who: Who::Anyone,
        body: None,
    },
    Probe {
        component: "order",
        method: Method::GET,
        path: "/api/orders",
        as_who: Who::Customer,
        body: None,
    },
    Probe {
        component: "payment",
        method: Method::GET,
        path: "/api/payments?order_id={order}",
        as_who: Who::Customer,
        body: None,
    },
    Probe {
        component: "notification",
        method: Method::GET,
        path: "/api/notifications",
        as_who: Who::Customer,
        body: None,
    },
    Probe {
        component: "gateway",
        method: Method::POST,
        path: "/graphql",
        as_who: Who::Anyone,
        body: Some(r#"{"query":"{ __typename }"}"#),
    },
];

pub(super) fn index_of(component: &str) -> usize {
    PROBES
        .iter()
        .position(|p| p.component == component)
        .unwrap_or_default()
}

/// What the probes and the load need in the shop: tokens, a product, and a paid order of the
/// customer's (so that the payment component has a payment to answer with).
pub(super) struct Fixture {
    admin: String,
    customer: String,
    pub(super) product: String,
    pub(super) order: String,
}

impl Fixture {
    pub(super) async fn create(addr: &str, signer: &Signer) -> anyhow::Result<Fixture> {
        let admin = signer.token(&["USER", "ADMIN"])?;
        let customer = signer.token(&["USER"])?;
        let mut client = Client::connect(addr).await?;
        let tag = uuid::Uuid::new_v4().simple().to_string()[..10].to_owned();
        let sku = format!("bench-swap-{tag}");
        let product = create_product(&mut client, &admin, &sku, 1_000_000).await?;
        let body = order_body(&product);
        let answer = client
            .send(Method::POST, "/api/orders", Some(&customer), Some(&body))
            .await?;
        if answer.status != StatusCode::CREATED {
            bail!("POST /api/orders: {}", answer.describe());
        }
        let order = answer.json()?["id"]
            .as_str()
            .context("the order has no id")?
            .to_owned();
        let path = format!("/api/payments?order_id={order}");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let answer = client
                .send(Method::GET, &path, Some(&customer), None)
                .await?;
            if answer.status == StatusCode::OK {
                break;
            }
            if Instant::now() > deadline {
                bail!("GET {path}, 60 s after the order: {}", answer.describe());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Fixture {
            admin,
            customer,
            product,
            order,
        })
    }

    pub(super) fn token(&self, who: Who) -> Option<&str> {
        match who {
            Who::Anyone => None,
            Who::Customer => Some(&self.customer),
            Who::Admin => Some(&self.admin),
        }
    }
}
